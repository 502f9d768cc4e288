"""Layer maps: parsing, the (p, r, c) shape, the published maps, and one-line errors."""

import pytest

from huginn.errors import HuginnError
from huginn.retrofit.layer_map import (
    LayerMap,
    format_layers,
    parse_layers,
    parse_shape,
    published_map,
    resolve_layer_map,
)


def test_parse_ranges_and_commas():
    assert parse_layers("0-3") == (0, 1, 2, 3)
    assert parse_layers("0,2, 5-7") == (0, 2, 5, 6, 7)
    assert parse_layers("4") == (4,)
    assert parse_layers("") == () and parse_layers("none") == ()


def test_format_round_trips():
    for text in ("0-3", "0,2,5-7", "9", "1-2,4-5"):
        assert format_layers(parse_layers(text)) == text
    assert format_layers(()) == "none"


@pytest.mark.parametrize("text, fragment", [("3-1", "backwards"), ("a-b", "cannot read"), ("1,,2", "cannot read")])
def test_parse_errors(text, fragment):
    with pytest.raises(HuginnError, match=fragment):
        parse_layers(text)


def test_shape_gives_the_published_maps():
    # the rule (first p, the r before the last c, the last c) reproduces both published maps
    assert LayerMap.from_shape(4, 8, 4, n_layers=22) == published_map("tinyllama", 22)
    assert LayerMap.from_shape(4, 6, 4, n_layers=16) == published_map("olmo2-1b", 16)
    tl = published_map("tinyllama")
    assert (tl.prelude, tl.core, tl.coda) == (tuple(range(4)), tuple(range(10, 18)), tuple(range(18, 22)))
    ol = published_map("OLMo2")
    assert (ol.prelude, ol.core, ol.coda) == (tuple(range(4)), tuple(range(6, 12)), tuple(range(12, 16)))
    assert tl.dropped(22) == (4, 5, 6, 7, 8, 9) and ol.dropped(16) == (4, 5)


def test_parse_shape():
    assert parse_shape("4,8,4") == parse_shape("(4,8,4)") == parse_shape("4-8-4") == (4, 8, 4)
    with pytest.raises(HuginnError, match="prelude,core,coda"):
        parse_shape("4,8")


def test_errors_are_one_line():
    cases = [
        (lambda: LayerMap((0, 1), (1, 2), ()), "layer 1 appears in both the prelude and the core"),
        (lambda: LayerMap((), (2, 2), ()), "twice in the core"),
        (lambda: LayerMap((0,), (), (5,)), "at least one layer"),
        (
            lambda: LayerMap((0,), (1, 6), ()).validate(6),
            r"core layer 6 is out of range: the base has 6 layers \(0-5\)",
        ),
        (lambda: LayerMap.from_shape(4, 8, 4, n_layers=12), "needs 16 layers but the base has 12"),
        (lambda: published_map("tinyllama", 30), "use --shape 4,8,4"),
        (lambda: published_map("gpt2"), "valid: tinyllama, olmo2-1b"),
        (lambda: resolve_layer_map(8, core="1", shape="1,1,1"), "not layer lists and --shape"),
        (lambda: resolve_layer_map(8), "say which layers"),
    ]
    for make, fragment in cases:
        with pytest.raises(HuginnError, match=fragment) as err:
            make()
        assert "\n" not in str(err.value)


def test_resolve():
    assert resolve_layer_map(22, name="tinyllama").shape == (4, 8, 4)
    assert resolve_layer_map(30, shape="4,8,4").core == tuple(range(18, 26))
    m = resolve_layer_map(8, core="2-5")
    assert m.prelude == () and m.coda == () and m.layers == (2, 3, 4, 5)
    # non-contiguous, as in the paper's layer-choice ablation
    assert resolve_layer_map(16, prelude="0,1", core="2,5,8,11", coda="14,15").dropped(16) == (
        3,
        4,
        6,
        7,
        9,
        10,
        12,
        13,
    )
