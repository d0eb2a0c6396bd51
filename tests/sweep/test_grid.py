"""The sweep's grid (sweep/grid.py) against hand-expanded cells: SAM's and AMP's own keys, the cell names and
columns of cells.csv, every value type, and each bad grid as one clear error."""

import pytest

from flatness.core.errors import FlatnessError
from flatness.sweep.grid import Cell, expand, parse_grid, parse_seeds, varied_keys


def test_sams_adaptive_and_rho_multiply_sam_cells_only():
    cells = expand(parse_grid("method=erm,sam rho=0.05,0.1 adaptive=true,false lr=0.1"), [3])
    assert [c.values for c in cells] == [
        {"method": "erm", "lr": 0.1},
        {"method": "sam", "rho": 0.05, "adaptive": True, "lr": 0.1},
        {"method": "sam", "rho": 0.05, "adaptive": False, "lr": 0.1},
        {"method": "sam", "rho": 0.1, "adaptive": True, "lr": 0.1},
        {"method": "sam", "rho": 0.1, "adaptive": False, "lr": 0.1},
    ]
    assert [c.seed for c in cells] == [3] * 5
    # names list the keys in GRID_KEYS's order, whatever order they were typed in (issue 20, class 6)
    assert cells[1].name == "method-sam_lr-0.1_rho-0.05_adaptive-true_seed-3"
    assert cells[2].name == "method-sam_lr-0.1_rho-0.05_adaptive-false_seed-3"
    assert varied_keys(cells) == ["method", "rho", "adaptive"]  # lr has one value: no column


def test_amps_keys_multiply_amp_cells_only_and_seeds_come_last():
    grid = parse_grid("method=amp,erm inner_iter=1,2 ball=l2 epsilon=0.5")
    cells = expand(grid, [0, 1])
    assert [(c.values, c.seed) for c in cells] == [
        ({"method": "amp", "inner_iter": 1, "ball": "l2", "epsilon": 0.5}, 0),
        ({"method": "amp", "inner_iter": 1, "ball": "l2", "epsilon": 0.5}, 1),
        ({"method": "amp", "inner_iter": 2, "ball": "l2", "epsilon": 0.5}, 0),
        ({"method": "amp", "inner_iter": 2, "ball": "l2", "epsilon": 0.5}, 1),
        ({"method": "erm"}, 0),
        ({"method": "erm"}, 1),
    ]
    # epsilon and ball have one value each: they vary only with the method, so no column of their own
    assert varied_keys(cells) == ["method", "inner_iter"]
    with pytest.raises(FlatnessError, match="grid key adaptive applies only to sam cells, and the grid has no"):
        expand(parse_grid("method=erm,amp adaptive=true"), [0])
    with pytest.raises(FlatnessError, match="grid key inner_lr applies only to amp cells"):
        expand(parse_grid("inner_lr=0.1"), [0])


def test_a_grid_without_method_is_erm_and_names_no_method():
    cells = expand(parse_grid("lr=0.1,0.05 weight_decay=0"), [0])
    assert [c.params for c in cells] == [(("lr", 0.1), ("weight_decay", 0.0)), (("lr", 0.05), ("weight_decay", 0.0))]
    assert cells[1].name == "lr-0.05_weight_decay-0.0_seed-0"
    assert cells[0] == Cell((("lr", 0.1), ("weight_decay", 0.0)), 0)
    assert [c.name for c in expand({}, [4, 2])] == ["seed-4", "seed-2"]  # ERM at the defaults, per seed
    assert varied_keys(cells) == ["lr"]


def test_values_are_read_by_their_keys_type():
    grid = parse_grid("Batch-Size=32,64 nesterov=YES,off augment=1,No schedule=Cosine,step lr=1e-2 epochs=3")
    assert grid == {
        "batch_size": [32, 64],
        "nesterov": [True, False],
        "augment": [True, False],
        "schedule": ["cosine", "step"],
        "lr": [0.01],
        "epochs": [3],
    }
    assert [type(v) for v in grid["batch_size"] + grid["lr"]] == [int, int, float]
    assert parse_grid("lr=0.1,,0.2") == {"lr": [0.1, 0.2]}  # empty items are skipped
    assert parse_grid(None) == {} and parse_grid("  ") == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr", "grid entries look like KEY=V1,V2; got 'lr'"),
        ("=0.1", "grid entries look like KEY=V1,V2; got '=0.1'"),
        ("speed=1", "unknown grid key 'speed'; known: method, lr, batch_size"),
        ("lr=0.1 LR=0.2", "grid key lr is given twice"),
        ("lr=,", "grid key lr has no values"),
        ("lr=0.1,0.10", "grid key lr repeats a value"),
        ("nesterov=maybe", "grid key nesterov takes true or false, got 'maybe'"),
        ("epochs=2.5", "grid key epochs takes integers, got '2.5'"),
        ("lr=fast", "grid key lr takes numbers, got 'fast'"),
        ("lr=0.1=0.2", "grid key lr takes numbers, got '0.1=0.2'"),  # split at the first "="
        ("lr=nan", "grid key lr takes finite numbers, got 'nan'"),
        ("rho=inf", "grid key rho takes finite numbers, got 'inf'"),
    ],
)
def test_bad_grids_are_one_clear_error(text, message):
    with pytest.raises(FlatnessError) as err:
        parse_grid(text)
    assert str(err.value).startswith(message)


def test_seeds_from_text_or_a_list():
    assert parse_seeds("2, 0,1") == [2, 0, 1]
    assert parse_seeds([5, 3]) == [5, 3]
    assert parse_seeds("7,") == [7]
    for text, message in (
        ("0,x", "--seeds takes integers separated by commas, got '0,x'"),
        (" , ", "--seeds is empty"),
        ("1,2,1", "--seeds repeats a value"),
        ("1,36893488147419103232", "--seeds must be a whole number"),
    ):
        with pytest.raises(FlatnessError) as err:
            parse_seeds(text)
        assert str(err.value).startswith(message)


def test_no_seeds_is_an_empty_grid():
    with pytest.raises(FlatnessError) as err:
        expand(parse_grid("lr=0.1"), [])
    assert str(err.value) == "the grid is empty: nothing to run"
