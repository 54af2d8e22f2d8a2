"""medgen.ordering (chapter 30) against MONAI core's `monai.utils.ordering.Ordering` (GM's code, moved there).

Parity: for every ordering type at 2D and 3D, on square and non-square grids, with no transformation, each
transformation alone and combined, in all 6 transformation orders, medgen's sequence ordering and its inverse equal
MONAI's exactly (random: given the same NumPy seed; MONAI calls `np.random.shuffle` on the global state and medgen's
`generator=seed` uses `np.random.RandomState(seed)`, the same stream). Plus closed forms, invariants and error paths.
"""
import itertools

import numpy as np
import pytest
import torch
from monai.utils.enums import OrderingTransformations as CoreTransformations
from monai.utils.enums import OrderingType as CoreOrderingType
from monai.utils.ordering import Ordering as CoreOrdering

from medgen.ordering import Ordering, OrderingTransformations, OrderingType

ORDERS = list(itertools.permutations(["transpose", "rotate_90", "reflect"]))
GRIDS = {2: [(1, 3, 5), (1, 4, 4)], 3: [(1, 2, 3, 4), (1, 3, 3, 3)]}


def _cases(sd: int):
    "Reflections, transpositions and rotations for one spatial_dims (each alone, several, and none)."
    refl = [()] + [b for b in itertools.product([False, True], repeat=sd) if any(b)]
    perms = [p for p in itertools.permutations(range(sd)) if p != tuple(range(sd))]
    trans = [()] + [(p,) for p in perms] + [(perms[0], perms[-1])]
    rots = [(), ((0, 1),), ((1, 0),), ((0, 1), (0, 1))] + ([((0, 2),), ((1, 2), (0, 2))] if sd == 3 else [])
    return refl, trans, rots


@pytest.mark.parametrize("ordering_type", [t.value for t in OrderingType])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_parity_with_monai(ordering_type, spatial_dims):
    refl, trans, rots = _cases(spatial_dims)
    n = 0
    for dims, r, tr, ro, order in itertools.product(GRIDS[spatial_dims], refl, trans, rots, ORDERS):
        np.random.seed(7)
        core = CoreOrdering(ordering_type, spatial_dims, dims, r, tr, ro, order)
        ours = Ordering(ordering_type, spatial_dims, dims, r, tr, ro, order, generator=7)
        np.testing.assert_array_equal(ours.get_sequence_ordering(), core.get_sequence_ordering(),
                                      err_msg=str((dims, r, tr, ro, order)))
        np.testing.assert_array_equal(ours.get_revert_sequence_ordering(), core.get_revert_sequence_ordering())
        np.testing.assert_array_equal(ours.template, core.template)
        n += 1
    assert n > 100


@pytest.mark.parametrize("shape", [(3, 4), (4, 3), (1, 6), (2, 3, 4), (3, 3, 3), (4, 4, 4)])
def test_static_scans_match_monai(shape):
    for name in ("raster_scan_idx", "s_curve_idx"):
        np.testing.assert_array_equal(getattr(Ordering, name)(*shape), getattr(CoreOrdering, name)(*shape))
    np.random.seed(3)
    core = CoreOrdering.random_idx(*shape)
    np.testing.assert_array_equal(Ordering.random_idx(*shape, generator=3), core)
    np.random.seed(3)
    np.testing.assert_array_equal(Ordering.random_idx(*shape), core)  # None: the global state, as GM


def test_random_uses_global_state_without_generator():
    np.random.seed(21)
    core = CoreOrdering("random", 3, (1, 3, 4, 2)).get_sequence_ordering()
    np.random.seed(21)
    np.testing.assert_array_equal(Ordering("random", 3, (1, 3, 4, 2)).get_sequence_ordering(), core)


def test_random_generator_kinds():
    a = Ordering("random", 2, (1, 6, 6), generator=1).get_sequence_ordering()
    np.testing.assert_array_equal(a, Ordering("random", 2, (1, 6, 6), generator=1).get_sequence_ordering())
    np.testing.assert_array_equal(a, Ordering("random", 2, (1, 6, 6), generator=np.random.RandomState(1)).get_sequence_ordering())
    assert (a != Ordering("random", 2, (1, 6, 6), generator=2).get_sequence_ordering()).any()
    g = Ordering("random", 2, (1, 6, 6), generator=np.random.default_rng(0)).get_sequence_ordering()
    np.testing.assert_array_equal(np.sort(g), np.arange(36))
    state = np.random.get_state()
    Ordering("random", 2, (1, 6, 6), generator=5)
    assert (np.random.get_state()[1] == state[1]).all()  # a seed does not touch the global state
    with pytest.raises(TypeError, match="generator"):
        Ordering("random", 2, (1, 4, 4), generator="0")


@pytest.mark.parametrize("ordering_type", [t.value for t in OrderingType])
@pytest.mark.parametrize("dims", [(1, 5, 3), (1, 2, 3, 4)])
def test_permutation_and_round_trip(ordering_type, dims):
    o = Ordering(ordering_type, len(dims) - 1, dims, rot90_axes=((0, 1),), reflected_spatial_dims=(True,), generator=0)
    seq, rev = o.get_sequence_ordering(), o.get_revert_sequence_ordering()
    n = int(np.prod(dims[1:]))
    np.testing.assert_array_equal(np.sort(seq), np.arange(n))
    np.testing.assert_array_equal(seq[rev], np.arange(n))
    np.testing.assert_array_equal(rev[seq], np.arange(n))
    x = np.random.RandomState(0).randint(0, 100, size=n)
    np.testing.assert_array_equal(o(x)[rev], x)
    xb = torch.randint(0, 100, (3, n))  # batched torch tensors reorder the last axis
    torch.testing.assert_close(o(xb)[..., rev], xb)
    torch.testing.assert_close(o(xb)[2], torch.as_tensor(o(xb[2].numpy())))


def test_closed_forms():
    np.testing.assert_array_equal(Ordering("raster_scan", 2, (1, 3, 4)).get_sequence_ordering(), np.arange(12))
    np.testing.assert_array_equal(Ordering("raster_scan", 3, (1, 2, 3, 4)).get_sequence_ordering(), np.arange(24))
    # the s-curve alternates direction row by row
    np.testing.assert_array_equal(Ordering("s_curve", 2, (1, 3, 4)).get_sequence_ordering(),
                                  [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11])
    # GM's 3D rule: depth reversed on odd columns c (not odd steps)
    np.testing.assert_array_equal(Ordering("s_curve", 3, (1, 2, 2, 2)).get_sequence_ordering(), [0, 1, 3, 2, 7, 6, 4, 5])
    grid = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(Ordering("raster_scan", 2, (1, 3, 4), transpositions_axes=((1, 0),)).get_sequence_ordering(),
                                  grid.T.ravel())
    np.testing.assert_array_equal(Ordering("raster_scan", 2, (1, 3, 4), rot90_axes=((0, 1),)).get_sequence_ordering(),
                                  np.rot90(grid).ravel())
    np.testing.assert_array_equal(Ordering("raster_scan", 2, (1, 3, 4), reflected_spatial_dims=(False, True)).get_sequence_ordering(),
                                  grid[:, ::-1].ravel())
    np.testing.assert_array_equal(  # negative axes as NumPy's
        Ordering("s_curve", 2, (1, 3, 4), rot90_axes=((-2, -1),)).get_sequence_ordering(),
        Ordering("s_curve", 2, (1, 3, 4), rot90_axes=((0, 1),)).get_sequence_ordering())


def test_s_curve_steps_are_neighbours_in_2d():
    for shape in [(5, 7), (4, 4), (1, 3)]:
        idx = Ordering.s_curve_idx(*shape)
        assert (np.abs(np.diff(idx, axis=0)).sum(1) == 1).all()


def test_enums_match_monai():
    assert [t.value for t in OrderingType] == [t.value for t in CoreOrderingType]
    assert [t.value for t in OrderingTransformations] == [t.value for t in CoreTransformations]
    assert OrderingType.S_CURVE == "s_curve" and str(OrderingTransformations.REFLECT) == "reflect"
    o = Ordering(OrderingType.S_CURVE, 2, (1, 3, 4), transformation_order=(OrderingTransformations.REFLECT,),
                 reflected_spatial_dims=(True, False))
    np.testing.assert_array_equal(o.get_sequence_ordering(),
                                  Ordering("s_curve", 2, (1, 3, 4), reflected_spatial_dims=(True, False)).get_sequence_ordering())


def test_none_transformations_as_monai_defaults():
    core = CoreOrdering("s_curve", 2, (1, 3, 4))  # MONAI's defaults are None, GM's ()
    ours = Ordering("s_curve", 2, (1, 3, 4), None, None, None)
    np.testing.assert_array_equal(ours.get_sequence_ordering(), core.get_sequence_ordering())


@pytest.mark.parametrize("kwargs, match", [
    (dict(ordering_type="hilbert"), "ordering_type"),
    (dict(spatial_dims=1, dimensions=(1, 4)), "spatial_dims"),
    (dict(spatial_dims=4, dimensions=(1, 2, 2, 2, 2)), "spatial_dims"),
    (dict(dimensions=(1, 4)), "dimensions"),
    (dict(dimensions=(1, 4, 0)), "dimensions"),
    (dict(reflected_spatial_dims=(True, False, True)), "reflected_spatial_dims"),
    (dict(transpositions_axes=((0, 2),)), "transpositions_axes"),
    (dict(transpositions_axes=((0, 0),)), "transpositions_axes"),
    (dict(transpositions_axes=((0,),)), "transpositions_axes"),
    (dict(rot90_axes=((0, 0),)), "rot90_axes"),
    (dict(rot90_axes=((0, -2),)), "rot90_axes"),
    (dict(rot90_axes=((0, 2),)), "rot90_axes"),
    (dict(rot90_axes=((0, 1, 1),)), "rot90_axes"),
    (dict(transformation_order=("reflect", "shear")), "transformation_order"),
    (dict(transformation_order=("reflect", "reflect")), "duplicates"),
])
def test_errors(kwargs, match):
    kw = dict(ordering_type="raster_scan", spatial_dims=2, dimensions=(1, 4, 4)) | kwargs
    with pytest.raises(ValueError, match=match):
        Ordering(**kw)


@pytest.mark.parametrize("kwargs", [dict(ordering_type="hilbert"), dict(dimensions=(1, 4)),
                                    dict(transformation_order=("reflect", "reflect")),
                                    dict(transformation_order=("shear",)), dict(rot90_axes=((0, 0),)),
                                    dict(rot90_axes=((0, 2),))])
def test_errors_where_monai_raises_too(kwargs):
    "Where MONAI raises (its own checks or NumPy's), it is a ValueError, and so is ours."
    kw = dict(ordering_type="raster_scan", spatial_dims=2, dimensions=(1, 4, 4)) | kwargs
    with pytest.raises(ValueError):
        CoreOrdering(**kw)
    with pytest.raises(ValueError):
        Ordering(**kw)
