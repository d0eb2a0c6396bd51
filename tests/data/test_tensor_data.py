"""On-device augmentation equals torchvision's crop and flip, checked against an independent loop."""

import torch

from flatness.data.tensor_data import AugmentSpec, augment_batch


def _reference(x, spec, offsets, flips, fill):
    """Pad, crop and flip one image at a time with plain slicing."""
    out = []
    p = spec.padding
    for k in range(x.shape[0]):
        img = x[k]
        if p:
            c, h, w = img.shape
            padded = fill.view(c, 1, 1).expand(c, h + 2 * p, w + 2 * p).clone()
            padded[:, p : p + h, p : p + w] = img
            i, j = int(offsets[0, k]), int(offsets[1, k])
            img = padded[:, i : i + h, j : j + w]
        if spec.flip and flips[k]:
            img = img.flip(2)
        out.append(img)
    return torch.stack(out)


def test_batched_crop_and_flip_match_a_per_image_loop():
    x = torch.randn(7, 3, 6, 5)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    spec = AugmentSpec(padding=2, flip=True)
    g = torch.Generator().manual_seed(3)
    got = augment_batch(x, spec, g, pad_value=fill)
    g = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 5, (2, 7), generator=g)
    flips = torch.rand(7, generator=g) < 0.5
    assert flips.any() and (~flips).any() and (offsets != 2).any()  # the draw exercises both branches
    torch.testing.assert_close(got, _reference(x, spec, offsets, flips, fill), rtol=0, atol=0)


def test_no_augmentation_is_identity_and_device_batches_are_reproducible():
    from flatness.data.tensor_data import TensorImageDataset
    from flatness.training.feeding import EpochBatches, device_flags

    x, y = torch.randn(10, 1, 4, 4), torch.arange(10)
    assert augment_batch(x, AugmentSpec(), torch.Generator()) is x
    loader = EpochBatches(
        TensorImageDataset(x, y),
        3,
        device_flags(torch.device("cpu")),
        device=torch.device("cpu"),
        on_device=True,
        augment=AugmentSpec(1, True),
    )
    assert len(loader) == 3  # 3 + 3 + 3 + 1: the singleton last batch is dropped
    first = list(loader.epoch(torch.Generator().manual_seed(0)))
    again = list(loader.epoch(torch.Generator().manual_seed(0)))
    assert len(first) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert len(set(torch.cat([b[1] for b in first]).tolist())) == 9
    assert any(not torch.equal(bx, x[by]) for bx, by, _ in first)  # augmentation did act
