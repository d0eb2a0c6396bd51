"""User-facing errors.

Anything a user can cause (a bad option, a missing or foreign file, a diverging run) raises
``FlatnessError`` with a one-line message; the CLI prints that line and exits non-zero instead of a
traceback. Bugs stay ordinary exceptions so they keep their traceback.
"""

import re


class FlatnessError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code = 2


class DivergedError(FlatnessError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""

    exit_code = 3


def single_line(text: str) -> str:
    """``text`` as one line: its non-empty lines, stripped, joined by spaces.

    An error message is one line, whatever a library put into it.
    """
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


class ModelRaisedError(FlatnessError):
    """The model's own forward raised: user code, so one line naming the model, not an internal error.

    ``original`` is the exception the forward raised (also the ``__cause__``), for code that words its
    own message (the data check before training names the batch's shape).
    """

    def __init__(self, model_name: str, original: Exception):
        text = single_line(str(original))
        raised = f"{type(original).__name__}: {text}" if text else type(original).__name__
        super().__init__(f"the model ({model_name}) raised {raised} in its forward")
        self.original = original


class Signalled(KeyboardInterrupt):
    """A signal delivered to the process (SIGINT, SIGTERM), raised where the process is.

    Only these end a command with "Interrupted": a ``KeyboardInterrupt`` that code raises by itself (a
    user's factory, say) is not a signal and is reported as an error like anything else it raises.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# Libraries' error texts advise the unsafe way round a refusal: torch's "Re-running `torch.load` with
# `weights_only` set to `False` will likely succeed", numpy's "pass allow_pickle=True". flatness never
# takes that path, so a message never suggests it.
_UNSAFE_ADVICE = re.compile(
    r"weights_only|allow_pickle|pickle=True|can still be loaded|trust the source|safe_globals", re.IGNORECASE
)
_SENTENCE = re.compile(r"(?<=[.;!?])\s+")
SAFE_REPLACEMENT = "(the file needs Python objects unpickled, which flatness never does)"


def without_unsafe_advice(text: str) -> str:
    """``text`` with every sentence that mentions ``weights_only`` or ``allow_pickle`` replaced by a note.

    Args:
        text: an error message, possibly quoting a library.

    Returns:
        The message; sentences without such advice are kept as they are.
    """
    if not _UNSAFE_ADVICE.search(text):
        return text
    kept: list[str] = []
    for sentence in _SENTENCE.split(text):
        if not _UNSAFE_ADVICE.search(sentence):
            kept.append(sentence)
        elif SAFE_REPLACEMENT not in kept:
            # what came before the library's text (our "cannot read X:") stays
            head = _UNSAFE_ADVICE.split(sentence)[0].rsplit(":", 1)
            kept.append((head[0] + ": " if len(head) == 2 else "") + SAFE_REPLACEMENT)
    return " ".join(kept)
