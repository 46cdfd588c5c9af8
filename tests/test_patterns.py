"""Built-in block patterns against token-level definitions written here from builtin.py's docstrings.

Each reference below builds the exact token-level [N, N] mask of a pattern in its ordering, then
pools it to blocks with "any": a block pair is kept when any of its real (query, key) pairs is.
Nothing here uses BlockGeometry or the layout's permutations.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparsevdit import patterns
from sparsevdit.layout import TokenLayout
from sparsevdit.patterns import BlockPattern, PatternError, block_lengths, num_blocks
from sparsevdit.patterns import registry as registry_module

BLOCK_SIZES = [4, 8, 16, 128]
SETTINGS = settings(max_examples=100, deadline=None)


# strategies --------------------------------------------------------------------------------------


@st.composite
def layouts(draw) -> TokenLayout:
    frames = draw(st.integers(1, 5))
    height = draw(st.integers(1, 5))
    width = draw(st.integers(1, 6))
    position = draw(st.sampled_from(["none", "prefix", "suffix"]))
    text = 0 if position == "none" else draw(st.integers(0, 20))
    return TokenLayout(frames, height, width, text, position)


block_sizes = st.sampled_from(BLOCK_SIZES)
widths = st.one_of(st.none(), st.integers(1, 80), st.integers(80, 400))
flags = st.booleans()


# token-level reference -----------------------------------------------------------------------------


def token_info(lay: TokenLayout, ordering: str):
    """Per token of the sequence in ``ordering``: (is_text, video position, frame of the token).

    Video tokens are contiguous after any prefix text in both orderings; only their order changes.
    frame_major: video position j is frame j // (H*W). position_major: j = p * frames + f, so
    frame j % frames.
    """
    n = lay.num_tokens
    t = lay.text_tokens if lay.text_position != "none" else 0
    v = lay.frames * lay.height * lay.width
    vs = t if lay.text_position == "prefix" else 0
    idx = torch.arange(n)
    is_video = (idx >= vs) & (idx < vs + v)
    vpos = idx - vs
    if ordering == "frame_major":
        frame = vpos // (lay.height * lay.width)
    elif ordering == "position_major":
        frame = vpos % lay.frames
    else:
        raise AssertionError(ordering)
    frame = torch.where(is_video, frame, torch.full_like(frame, -1))
    return ~is_video, vpos, frame


def ref_text(tok: torch.Tensor, is_text: torch.Tensor, text_rows: bool, text_cols: bool) -> torch.Tensor:
    if text_rows:
        tok = tok | is_text[:, None]
    if text_cols:
        tok = tok | is_text[None, :]
    return tok


def ref_band(lay: TokenLayout, ordering: str, width, text_rows: bool, text_cols: bool) -> torch.Tensor:
    is_text, vpos, _ = token_info(lay, ordering)
    w = lay.height * lay.width if width is None else width
    radius = w // 2
    is_video = ~is_text
    tok = is_video[:, None] & is_video[None, :] & ((vpos[:, None] - vpos[None, :]).abs() <= radius)
    return ref_text(tok, is_text, text_rows, text_cols)


def ref_diagonal(lay, block_size, width=None, text_rows=True, text_cols=True):
    return ref_band(lay, "frame_major", width, text_rows, text_cols), "frame_major"


def ref_multi_diagonal(lay, block_size, width=None, text_rows=True, text_cols=True):
    return ref_band(lay, "position_major", width, text_rows, text_cols), "position_major"


def ref_vertical_stripe(lay, block_size, sink_frames=0, blocks=None, text_rows=True, text_cols=True, ordering="frame_major"):
    """Key column kept when: text (text_cols), a video token of a frame < sink_frames, or in a listed block.

    Returns None when no key column is kept (the builder must refuse).
    """
    is_text, _, frame = token_info(lay, ordering)
    n = lay.num_tokens
    key_block = torch.arange(n) // block_size
    cols = (frame >= 0) & (frame < sink_frames)
    for b in blocks or []:
        cols = cols | (key_block == b)
    if text_cols:
        cols = cols | is_text
    if not bool(cols.any()):
        return None, ordering
    tok = cols[None, :].expand(n, n).clone()
    return ref_text(tok, is_text, text_rows, False), ordering


def ref_dense(lay, block_size):
    return torch.ones(lay.num_tokens, lay.num_tokens, dtype=torch.bool), "frame_major"


def ref_skip(lay, block_size):
    return torch.zeros(lay.num_tokens, lay.num_tokens, dtype=torch.bool), "frame_major"


REFERENCES = {
    "dense": ref_dense,
    "skip": ref_skip,
    "diagonal": ref_diagonal,
    "multi_diagonal": ref_multi_diagonal,
    "vertical_stripe": ref_vertical_stripe,
}


def ref_union(lay, block_size, parts):
    """OR of the parts' token masks; None ordering conflict -> ("conflict", orderings)."""
    toks, orderings = [], set()
    for name, params in parts:
        tok, ordering = REFERENCES[name](lay, block_size, **params)
        if tok is None:
            return None, "empty-part"
        toks.append(tok)
        if name not in ("dense", "skip"):
            orderings.add(ordering)
    if len(orderings) > 1:
        return None, "conflict"
    out = toks[0].clone()
    for t in toks[1:]:
        out |= t
    return out, (orderings.pop() if orderings else "frame_major")


def pool_any(tok: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block mask: a block pair is kept if any of its real token pairs is kept."""
    n = tok.shape[0]
    nb = -(-n // block_size)
    padded = torch.zeros(nb * block_size, nb * block_size, dtype=torch.bool)
    padded[:n, :n] = tok
    return padded.view(nb, block_size, nb, block_size).any(dim=3).any(dim=1)


def expand_blocks(block_mask: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    blk = torch.arange(n) // block_size
    return block_mask[blk[:, None], blk[None, :]]


def check_index_data(p: BlockPattern) -> None:
    """kv_counts / kv_indices describe exactly block_mask: ascending, -1 padded."""
    nb = num_blocks(p.layout.num_tokens, p.block_size)
    mask = p.block_mask
    assert mask.shape == (nb, nb) and mask.dtype == torch.bool
    assert p.num_q_blocks == p.num_kv_blocks == nb
    assert p.kv_counts.dtype == torch.int32 and p.kv_indices.dtype == torch.int32
    assert p.kv_counts.shape == (nb,)
    assert p.kv_indices.shape == (nb, max(1, int(mask.sum(1).max())))
    for i in range(nb):
        kept = torch.nonzero(mask[i]).flatten().tolist()
        count = int(p.kv_counts[i])
        assert count == len(kept)
        row = p.kv_indices[i].tolist()
        assert row[:count] == kept  # ascending, exactly the kept blocks
        assert all(x == -1 for x in row[count:])
    assert p.is_empty == (not bool(mask.any()))
    assert p.is_dense == bool(mask.all())


def check_density(p: BlockPattern) -> None:
    n = p.layout.num_tokens
    tok = expand_blocks(p.block_mask, n, p.block_size)
    assert torch.equal(p.token_mask(), tok)
    expected = tok.sum().item() / (n * n)
    assert p.density == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert 0.0 <= p.density <= 1.0


def check_against_reference(p: BlockPattern, tok: torch.Tensor, ordering: str) -> None:
    assert p.ordering == ordering
    expected = pool_any(tok, p.block_size)
    assert torch.equal(p.block_mask, expected), (p.describe(), p.block_mask.int(), expected.int())
    check_index_data(p)
    check_density(p)


# property tests: each built-in against its reference ---------------------------------------------


@SETTINGS
@given(layouts(), block_sizes)
def test_dense_and_skip(lay, bs):
    d = patterns.build("dense", lay, block_size=bs)
    tok, ordering = ref_dense(lay, bs)
    check_against_reference(d, tok, ordering)
    assert d.is_dense and not d.is_empty and d.density == 1.0
    s = patterns.build("skip", lay, block_size=bs)
    tok, ordering = ref_skip(lay, bs)
    check_against_reference(s, tok, ordering)
    assert s.is_empty and s.density == 0.0
    assert not s.is_dense


@SETTINGS
@given(layouts(), block_sizes, widths, flags, flags)
def test_diagonal_matches_token_definition(lay, bs, width, text_rows, text_cols):
    p = patterns.build("diagonal", lay, block_size=bs, width=width, text_rows=text_rows, text_cols=text_cols)
    tok, ordering = ref_diagonal(lay, bs, width, text_rows, text_cols)
    check_against_reference(p, tok, ordering)


@SETTINGS
@given(layouts(), block_sizes, widths, flags, flags)
def test_multi_diagonal_matches_token_definition(lay, bs, width, text_rows, text_cols):
    p = patterns.build("multi_diagonal", lay, block_size=bs, width=width, text_rows=text_rows, text_cols=text_cols)
    tok, ordering = ref_multi_diagonal(lay, bs, width, text_rows, text_cols)
    check_against_reference(p, tok, ordering)


@st.composite
def stripe_params(draw, lay: TokenLayout, bs: int, ordering=None) -> dict:
    nb = num_blocks(lay.num_tokens, bs)
    return dict(
        sink_frames=draw(st.integers(0, lay.frames)),
        blocks=draw(st.lists(st.integers(0, nb - 1), max_size=4)),
        text_rows=draw(flags),
        text_cols=draw(flags),
        ordering=ordering or draw(st.sampled_from(["frame_major", "position_major"])),
    )


@SETTINGS
@given(st.data(), layouts(), block_sizes)
def test_vertical_stripe_matches_token_definition(data, lay, bs):
    params = data.draw(stripe_params(lay, bs))
    tok, ordering = ref_vertical_stripe(lay, bs, **params)
    if tok is None:
        with pytest.raises(PatternError, match="keeps no key"):
            patterns.build("vertical_stripe", lay, block_size=bs, **params)
        return
    p = patterns.build("vertical_stripe", lay, block_size=bs, **params)
    check_against_reference(p, tok, ordering)


@st.composite
def union_parts(draw, lay: TokenLayout, bs: int) -> list:
    ordering = draw(st.sampled_from(["frame_major", "position_major"]))
    band = "diagonal" if ordering == "frame_major" else "multi_diagonal"
    choices = st.sampled_from(["band", "stripe", "dense", "skip"])
    parts = []
    for kind in draw(st.lists(choices, min_size=1, max_size=3)):
        if kind == "band":
            parts.append((band, dict(width=draw(widths), text_rows=draw(flags), text_cols=draw(flags))))
        elif kind == "stripe":
            params = draw(stripe_params(lay, bs, ordering=ordering))
            params["sink_frames"] = max(params["sink_frames"], 1)  # never an empty part
            parts.append(("vertical_stripe", params))
        else:
            parts.append((kind, {}))
    return parts


@SETTINGS
@given(st.data(), layouts(), block_sizes)
def test_union_is_or_of_parts(data, lay, bs):
    parts = data.draw(union_parts(lay, bs))
    tok, ordering = ref_union(lay, bs, parts)
    assert tok is not None
    spec = [{"name": name, "params": params} for name, params in parts]
    p = patterns.build("union", lay, block_size=bs, patterns=spec)
    check_against_reference(p, tok, ordering)
    # the union's block mask is also the OR of its parts' block masks
    parts_built = [patterns.build(name, lay, block_size=bs, **params) for name, params in parts]
    expected = torch.zeros_like(p.block_mask)
    for part in parts_built:
        expected |= part.block_mask
    assert torch.equal(p.block_mask, expected)


@SETTINGS
@given(layouts(), block_sizes, widths)
def test_union_of_mismatched_orderings_raises(lay, bs, width):
    spec = [
        {"name": "diagonal", "params": {"width": width}},
        {"name": "multi_diagonal", "params": {"width": width}},
    ]
    with pytest.raises(PatternError, match="orderings"):
        patterns.build("union", lay, block_size=bs, patterns=spec)


# concrete cases -----------------------------------------------------------------------------------


def test_diagonal_block_size_one_is_token_rule():
    lay = TokenLayout(2, 2, 3, 2, "prefix")
    p = patterns.build("diagonal", lay, block_size=1, width=5, text_rows=False, text_cols=False)
    m = p.block_mask
    for q in range(lay.num_tokens):
        for k in range(lay.num_tokens):
            video = q >= 2 and k >= 2
            assert bool(m[q, k]) == (video and abs(q - k) <= 2), (q, k)


def test_multi_diagonal_keeps_same_place_in_every_frame():
    # radius frames - 1 in position-major order covers a position's run over all frames.
    lay = TokenLayout(4, 2, 3, 3, "suffix")
    f = lay.frames
    p = patterns.build("multi_diagonal", lay, block_size=1, width=2 * (f - 1) + 1, text_rows=False, text_cols=False)
    assert p.ordering == "position_major"
    perm = lay.permutation("position_major")
    # map the mask back to frame-major token indices: fm[perm[i], perm[j]] = m[i, j]
    fm = torch.zeros_like(p.block_mask)
    fm[perm[:, None], perm[None, :]] = p.block_mask
    tpf = lay.tokens_per_frame
    for q in range(lay.video_tokens):
        for k in range(lay.video_tokens):
            (fq, pq), (fk, pk) = divmod(q, tpf), divmod(k, tpf)
            expected = abs((pq - pk) * f + (fq - fk)) <= f - 1
            assert bool(fm[q, k]) == expected, (q, k)
            if pq == pk:
                assert bool(fm[q, k])


def test_default_width_is_tokens_per_frame():
    lay = TokenLayout(3, 2, 4, 5, "prefix")
    for name in ("diagonal", "multi_diagonal"):
        a = patterns.build(name, lay, block_size=4)
        b = patterns.build(name, lay, block_size=4, width=lay.tokens_per_frame)
        assert torch.equal(a.block_mask, b.block_mask)
        assert a.params["width"] is None


def test_vertical_stripe_sink_frame_concrete():
    lay = TokenLayout(3, 2, 2)  # 12 tokens, frames of 4 tokens
    p = patterns.build("vertical_stripe", lay, block_size=4, sink_frames=1)
    assert p.block_mask.tolist() == [[True, False, False]] * 3
    p = patterns.build("vertical_stripe", lay, block_size=4, blocks=[2])
    assert p.block_mask.tolist() == [[False, False, True]] * 3
    assert p.kv_indices.tolist() == [[2]] * 3


def test_skip_index_data():
    p = patterns.build("skip", TokenLayout(2, 3, 3), block_size=4)
    assert p.kv_counts.tolist() == [0] * 5
    assert p.kv_indices.shape == (5, 1) and bool((p.kv_indices == -1).all())


def test_block_lengths_partial_last_block():
    assert block_lengths(10, 4).tolist() == [4, 4, 2]
    assert block_lengths(8, 4).tolist() == [4, 4]
    assert block_lengths(3, 128).tolist() == [3]
    assert num_blocks(10, 4) == 3 and num_blocks(8, 4) == 2


@SETTINGS
@given(layouts(), block_sizes, st.sampled_from(["dense", "skip", "diagonal", "multi_diagonal"]))
def test_describe_is_one_line_with_name_and_density(lay, bs, name):
    p = patterns.build(name, lay, block_size=bs)
    text = p.describe()
    assert "\n" not in text
    assert name in text
    assert f"{p.density:.1%}" in text
    assert "density" in text
    assert "\n" not in repr(p) and name in repr(p)


def test_describe_union_one_line():
    p = patterns.build("union", TokenLayout(2, 3, 4, 4, "prefix"), block_size=8, patterns=["diagonal", {"name": "vertical_stripe", "params": {"sink_frames": 1}}])
    text = p.describe()
    assert "\n" not in text and "union" in text and f"{p.density:.1%}" in text


# registry ----------------------------------------------------------------------------------------


BUILTINS = ["dense", "skip", "diagonal", "multi_diagonal", "vertical_stripe", "union"]


def test_available_lists_builtins():
    names = patterns.available()
    assert names == sorted(names)
    for name in BUILTINS:
        assert name in names
    for name in BUILTINS:
        assert patterns.summary(name)


def test_parameters_documented():
    params = {p.name: p for p in patterns.parameters("diagonal")}
    assert set(params) == {"width", "text_rows", "text_cols"}
    assert params["width"].default is None and params["text_rows"].default is True
    assert "band width" in params["width"].help
    vs = {p.name: p for p in patterns.parameters("vertical_stripe")}
    assert set(vs) == {"sink_frames", "blocks", "text_rows", "text_cols", "ordering"}
    # continuation lines are joined into the help text
    assert "stripes can be united" in vs["ordering"].help
    assert patterns.parameters("dense") == ()


def test_unknown_pattern_lists_available():
    lay = TokenLayout(2, 2, 2)
    with pytest.raises(PatternError) as info:
        patterns.build("diagonl", lay, block_size=4)
    msg = str(info.value)
    assert "diagonl" in msg
    for name in BUILTINS:
        assert name in msg
    with pytest.raises(PatternError):
        patterns.parameters("nope")
    with pytest.raises(PatternError):
        patterns.summary("nope")
    assert isinstance(info.value, ValueError)


def test_unknown_param_names_valid_params():
    lay = TokenLayout(2, 2, 2)
    with pytest.raises(PatternError) as info:
        patterns.build("diagonal", lay, block_size=4, radius=3)
    msg = str(info.value)
    assert "radius" in msg
    for valid in ("width", "text_rows", "text_cols"):
        assert valid in msg
    with pytest.raises(PatternError) as info:
        patterns.build("dense", lay, block_size=4, width=3)
    assert "width" in str(info.value) and "none" in str(info.value)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("diagonal", {"width": 0}, "width"),
        ("diagonal", {"width": -4}, "width"),
        ("diagonal", {"width": 2.5}, "width"),
        ("diagonal", {"width": True}, "width"),
        ("diagonal", {"width": "8"}, "width"),
        ("multi_diagonal", {"width": 0}, "width"),
        ("vertical_stripe", {"sink_frames": -1}, "sink_frames"),
        ("vertical_stripe", {"sink_frames": 4}, "sink_frames"),  # more than the layout's frames
        ("vertical_stripe", {"sink_frames": 1.0}, "sink_frames"),
        ("vertical_stripe", {"blocks": [99]}, "blocks"),
        ("vertical_stripe", {"blocks": [-1]}, "blocks"),
        ("vertical_stripe", {"blocks": [0, 3]}, "blocks"),  # 3 blocks: 0..2
        ("vertical_stripe", {"blocks": [True]}, "blocks"),
        ("vertical_stripe", {"blocks": 1}, "blocks"),  # not a list
        ("vertical_stripe", {"blocks": "01"}, "blocks"),  # not a list
        ("vertical_stripe", {}, "keeps no key"),  # no text, no sinks, no blocks
        ("vertical_stripe", {"sink_frames": 0, "blocks": []}, "keeps no key"),
        ("vertical_stripe", {"sink_frames": 1, "ordering": "zigzag"}, "ordering"),
        ("union", {}, "at least one"),
        ("union", {"patterns": []}, "at least one"),
        ("union", {"patterns": ["nope"]}, "nope"),
        ("union", {"patterns": [{"params": {}}]}, "name"),
        ("union", {"patterns": [5]}, "name"),
        ("union", {"patterns": ["union"]}, "union"),
        ("union", {"patterns": [{"name": "diagonal", "params": {"width": 0}}]}, "width"),
        ("union", {"patterns": [{"name": "diagonal", "params": [1]}]}, "params"),
        ("union", {"patterns": "diagonal"}, "patterns"),  # not a list
        ("union", {"patterns": 3}, "patterns"),  # not a list
    ],
)
def test_bad_values_raise_pattern_error(name, params, match):
    lay = TokenLayout(3, 2, 2)  # 12 tokens, 3 blocks of 4, no text
    with pytest.raises(PatternError, match=match):
        patterns.build(name, lay, block_size=4, **params)


def test_vertical_stripe_text_only_is_valid():
    lay = TokenLayout(2, 2, 2, 3, "prefix")
    p = patterns.build("vertical_stripe", lay, block_size=4)
    assert not p.is_empty
    with pytest.raises(PatternError, match="keeps no key"):
        patterns.build("vertical_stripe", lay, block_size=4, text_cols=False)


@pytest.mark.parametrize("bs", [0, -1, 1.5, True, "8", None])
def test_bad_block_size(bs):
    with pytest.raises(PatternError, match="block_size"):
        patterns.build("dense", TokenLayout(2, 2, 2), block_size=bs)


def test_bad_layout():
    with pytest.raises(PatternError, match="TokenLayout"):
        patterns.build("dense", (2, 2, 2), block_size=4)


def test_non_json_params_rejected():
    with pytest.raises(PatternError, match="JSON"):
        patterns.build("vertical_stripe", TokenLayout(2, 2, 2), block_size=4, blocks={0})


def test_union_mismatched_orderings_message():
    lay = TokenLayout(3, 2, 4, 2, "prefix")
    spec = ["multi_diagonal", {"name": "vertical_stripe", "params": {"sink_frames": 1}}]
    with pytest.raises(PatternError) as info:
        patterns.build("union", lay, block_size=4, patterns=spec)
    msg = str(info.value)
    assert "frame_major" in msg and "position_major" in msg and "ordering='position_major'" in msg
    # the fix the message suggests works
    spec[1]["params"]["ordering"] = "position_major"
    p = patterns.build("union", lay, block_size=4, patterns=spec)
    assert p.ordering == "position_major"
    # dense and skip fit any ordering
    p = patterns.build("union", lay, block_size=4, patterns=["multi_diagonal", "skip", "dense"])
    assert p.ordering == "position_major" and p.is_dense
    p = patterns.build("union", lay, block_size=4, patterns=["skip", "dense"])
    assert p.ordering == "frame_major"


@pytest.fixture
def checker_pattern():
    @patterns.register("checker")
    def checker(layout: TokenLayout, *, block_size: int, phase: int = 0, ordering: str = "frame_major"):
        """Block (i, j) kept when i + j + phase is even.

        Parameters:
        phase: 0 or 1, shifts the checkerboard
        ordering: token ordering the mask is in
        """
        if phase not in (0, 1):
            raise PatternError(f"checker: phase must be 0 or 1, got {phase!r}")
        nb = num_blocks(layout.num_tokens, block_size)
        i = torch.arange(nb)
        mask = (i[:, None] + i[None, :] + phase) % 2 == 0
        return (mask, ordering) if ordering != "frame_major" else mask

    try:
        yield checker
    finally:
        registry_module._REGISTRY.pop("checker", None)


def test_register_third_party_pattern(checker_pattern):
    assert "checker" in patterns.available()
    assert patterns.summary("checker") == "Block (i, j) kept when i + j + phase is even."
    docs = {p.name: p for p in patterns.parameters("checker")}
    assert set(docs) == {"phase", "ordering"}
    assert docs["phase"].default == 0 and "checkerboard" in docs["phase"].help
    lay = TokenLayout(2, 3, 4, 5, "suffix")  # 29 tokens -> 8 blocks of 4
    p = patterns.build("checker", lay, block_size=4, phase=1)
    assert p.name == "checker" and p.params == {"phase": 1, "ordering": "frame_major"}
    assert p.ordering == "frame_major"
    nb = 8
    i = torch.arange(nb)
    assert torch.equal(p.block_mask, (i[:, None] + i[None, :] + 1) % 2 == 0)
    check_index_data(p)
    check_density(p)
    q = patterns.build("checker", lay, block_size=4, ordering="position_major")
    assert q.ordering == "position_major"
    with pytest.raises(PatternError, match="phase"):
        patterns.build("checker", lay, block_size=4, phase=2)
    with pytest.raises(PatternError, match="phase, ordering"):
        patterns.build("checker", lay, block_size=4, size=2)
    # usable inside a union with frame-major parts
    u = patterns.build("union", lay, block_size=4, patterns=[{"name": "checker"}, "diagonal"])
    even = patterns.build("checker", lay, block_size=4).block_mask
    assert torch.equal(u.block_mask, even | patterns.build("diagonal", lay, block_size=4).block_mask)


def test_registry_cleaned_after_third_party():
    assert "checker" not in patterns.available()


def test_builder_returning_bad_mask_is_refused():
    @patterns.register("badshape")
    def badshape(layout, *, block_size):
        """Wrong shape."""
        return torch.zeros(1, 2, dtype=torch.bool)

    try:
        with pytest.raises(ValueError, match="badshape"):
            patterns.build("badshape", TokenLayout(2, 2, 2), block_size=4)
    finally:
        registry_module._REGISTRY.pop("badshape", None)


# identity ----------------------------------------------------------------------------------------


def test_equal_recipes_give_equal_hashable_patterns():
    lay = TokenLayout(3, 2, 4, 5, "prefix")
    a = patterns.build("diagonal", lay, block_size=8, width=6)
    b = patterns.build("diagonal", TokenLayout(3, 2, 4, 5, "prefix"), block_size=8, width=6)
    assert a is not b
    assert a == b and hash(a) == hash(b) and a.key == b.key
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1
    # defaults made explicit are the same recipe
    c = patterns.build("diagonal", lay, block_size=8, width=6, text_rows=True, text_cols=True)
    assert c == a and hash(c) == hash(a)
    # dict order of params does not matter
    u1 = patterns.build("union", lay, block_size=8, patterns=[{"name": "diagonal", "params": {"width": 6, "text_rows": False}}])
    u2 = patterns.build("union", lay, block_size=8, patterns=[{"params": {"text_rows": False, "width": 6}, "name": "diagonal"}])
    assert u1 == u2 and hash(u1) == hash(u2)
    # equality is by content: another recipe with the same block mask is the same pattern
    wider = patterns.build("diagonal", lay, block_size=8, width=8)
    assert torch.equal(wider.block_mask, a.block_mask) and wider == a and hash(wider) == hash(a)
    # anything that changes the mask, block size, layout or ordering differs
    different = [
        patterns.build("diagonal", lay, block_size=4, width=6),
        patterns.build("diagonal", TokenLayout(3, 2, 4, 5, "suffix"), block_size=8, width=6),
        patterns.build("multi_diagonal", lay, block_size=8, width=6),
        patterns.build("diagonal", lay, block_size=8, width=6, text_cols=False),
    ]
    for d in different:
        assert d != a
    assert len({a, *different}) == 1 + len(different)
    assert a != "diagonal"


@SETTINGS
@given(layouts(), block_sizes, widths)
def test_equal_recipes_equal_masks(lay, bs, width):
    a = patterns.build("diagonal", lay, block_size=bs, width=width)
    b = patterns.build("diagonal", lay, block_size=bs, width=width)
    assert a == b and hash(a) == hash(b)
    assert torch.equal(a.kv_indices, b.kv_indices) and torch.equal(a.kv_counts, b.kv_counts)


@pytest.mark.parametrize("value", ["false", 0, 1, None])
def test_bool_params_must_be_bool(value):
    layout = TokenLayout(2, 3, 4, text_tokens=5, text_position="prefix")
    with pytest.raises(PatternError, match="text_rows must be true or false"):
        patterns.build("diagonal", layout, block_size=8, text_rows=value)


def test_width_for_density_is_the_nearest_width():
    from sparsevdit.patterns import width_for_density

    lay = TokenLayout(6, 5, 7)
    for name in ("diagonal", "multi_diagonal"):
        dens = {w: patterns.build(name, lay, block_size=16, width=w).density for w in range(1, 2 * lay.num_tokens + 1)}
        for target in (0.05, 0.2, 0.37, 0.9, 1.5):
            w = width_for_density(lambda x: dens[x], target, 2 * lay.num_tokens)
            best = min(abs(d - target) for d in dens.values())
            assert abs(dens[w] - target) == pytest.approx(best)  # no width lands nearer
    assert width_for_density(lambda w: 1.0, 0.5, 10) == 1  # every width reaches it: the narrowest
