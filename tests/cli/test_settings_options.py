"""cli/settings_options.py: a command's options arrive as one settings object."""

import dataclasses

import click
from click.testing import CliRunner

from flatness.cli.settings_options import into_settings, quiet_option


@dataclasses.dataclass(frozen=True)
class Inner:
    draws: int | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Outer:
    samples: str = "10"
    seed: int = 0
    progress: bool = True
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_options_named_after_fields_become_the_settings_and_the_rest_stay():
    seen = {}

    @click.command()
    @click.option("--samples", default="10")
    @click.option("--seed", type=int, default=0)
    @click.option("--draws", type=int, default=None)
    @click.option("--out", default=None)
    @quiet_option
    @into_settings(Outer, inner=Inner)
    def command(settings, out):
        seen.update(settings=settings, out=out)

    result = CliRunner().invoke(command, ["--samples", "all", "--seed", "3", "--draws", "4", "--out", "o", "--quiet"])
    assert result.exit_code == 0, result.output
    # seed is the outer settings' (the nested one keeps its default); --quiet is progress=False
    assert seen["settings"] == Outer(samples="all", seed=3, progress=False, inner=Inner(draws=4, seed=0))
    assert seen["out"] == "o"
    CliRunner().invoke(command, [])
    assert seen["settings"] == Outer() and seen["out"] is None
