"""Survey statistics over result stores of any size: per-block partial sums, tree-reduced on the workers.

Columns are xarray DataArrays over ``spectrum`` as :func:`dzspec.io.store.open_results` and
:func:`~dzspec.io.store.open_spectra` return them (Dask-backed, read chunk by chunk); each statistic is a block
reduction of the execution core (:func:`dzspec.parallel.core.reduce_blocks`) on the active distributed client:
every block (a chunk of the columns) is read by one task and mapped to the partial sums of
:mod:`dzspec.kernels.survey_stats`, and the partials are summed in a fixed tree. Only the per-bin and
per-threshold totals reach this process; without a client the same sums run here.
Tables come back as xarray Datasets and :func:`write_table` stores them in the Zarr store under ``stats/<name>``.

Example (an in-memory array works the same as a lazy one):

>>> import numpy as np, xarray as xr
>>> z = xr.DataArray(np.array([1.0, 2.0, 3.0, 0.5]), dims="spectrum")
>>> table = good_fraction_table(z, z + np.array([0.0, 0.001, 0.5, 0.0]))
>>> table.gf.values.tolist(), table.n.values.tolist()
([0.75], [4])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from distributed import get_client

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.metrics import relative_error
from dzspec.kernels.survey_stats import (
    ERROR_EDGES,
    auc,
    bin_index,
    class_histogram_partial,
    error_histogram_partial,
    gf_from_partials,
    gf_partial,
    histogram_quantile,
    kept_error_partial,
    nearest_to_corner,
    threshold_from_partials,
    threshold_partial,
)
from dzspec.parallel.core import reduce_blocks

__all__ = [
    "class_histograms",
    "good_fraction_table",
    "open_columns",
    "parse_bins",
    "survey_report",
    "threshold_table",
    "write_table",
    "zp_zt_table",
]


def _dask(column: xr.DataArray | np.ndarray, like: da.Array | None = None) -> da.Array:
    data = column.data if isinstance(column, xr.DataArray) else column
    array = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=-1 if like is None
                                                                 else like.chunks)
    return array if like is None else array.rechunk(like.chunks)


class _Columns:
    """The columns of one statistic, opaque to distributed: their Dask graphs travel to a task as they are and the
    task reads only its own rows (a collection given to ``submit`` directly would be computed whole first)."""

    def __init__(self, arrays: Sequence[da.Array]):
        self.arrays = list(arrays)

    def rows(self, start: int, stop: int) -> list[np.ndarray]:
        return [np.asarray(a) for a in dask.compute(*(a[start:stop] for a in self.arrays), scheduler="sync")]


def _partial(block: int, start: int, stop: int, columns: _Columns, func: Callable[..., np.ndarray],
             kwargs: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(func(*columns.rows(start, stop), **kwargs), dtype=np.float64)


def _block_sum(func: Callable[..., np.ndarray], columns: Sequence[xr.DataArray | np.ndarray],
               shape: tuple[int, ...], **kwargs: Any) -> np.ndarray:
    """``sum over blocks of func(*blocks, **kwargs)`` (each of ``shape``): a block reduction of the execution core
    (:func:`dzspec.parallel.core.reduce_blocks`) on the active distributed client, one block per chunk of the first
    column; without a client, the same sums in this process."""
    first = _dask(columns[0])
    arrays = _Columns([first, *(_dask(c, first) for c in columns[1:])])
    starts = np.concatenate([[0], np.cumsum(first.chunks[0])]).astype(int)
    bounds = list(itertools.pairwise(starts.tolist())) or [(0, 0)]
    try:
        client = get_client()
    except ValueError:  # no distributed client: NumPy columns or a notebook without a cluster
        client = None
    if client is None:
        total = np.zeros(shape)
        for block, (start, stop) in enumerate(bounds):
            total += _partial(block, start, stop, arrays, func, kwargs)
        return total
    return reduce_blocks(client, _partial, bounds, args=(arrays, func, kwargs), split_every=16,
                         name=getattr(func, "__name__", "statistic").strip("_"), progress=False)


def _bin_of(z_true: np.ndarray, by: np.ndarray | None, edges: np.ndarray | None) -> np.ndarray:
    """Each spectrum's bin: of ``by``, or of the true redshift when no column is given."""
    return bin_index(z_true if by is None else by, edges)


def _gf_block(z_pred, z_true, by=None, *, edges, nbins, tol, form):
    return gf_partial(z_pred, z_true, _bin_of(z_true, by, edges), nbins, tol, form)


def _error_block(z_pred, z_true, by=None, *, edges, nbins, centre, error_edges):
    index = _bin_of(z_true, by, edges)
    error = relative_error(z_pred, z_true)
    if centre is not None:  # the MAD pass: distances from each bin's median
        inside = index >= 0
        error = np.where(inside, np.abs(error - centre[np.maximum(index, 0)]), np.nan)
    return error_histogram_partial(error, index, nbins, error_edges)


def _kept_block(z_pred, z_true, by=None, *, edges, nbins, upper):
    return kept_error_partial(relative_error(z_pred, z_true), _bin_of(z_true, by, edges), upper, nbins)


def good_fraction_table(z_pred: xr.DataArray, z_true: xr.DataArray, by: xr.DataArray | None = None,
                        edges: Sequence[float] | np.ndarray | None = None, *, tol: float = 0.005,
                        form: str = "relative", nmad: float = 5.0) -> xr.Dataset:
    """GF with its 68 % Wilson interval and B26's MAE after ``nmad`` x MAD rejection, per bin of ``by``.

    Parameters
    ----------
    z_pred, z_true
        Per-spectrum predicted and true redshifts (NaN truths are not counted; NaN predictions are failures).
    by, edges
        Bin the spectra by this per-spectrum quantity (z, snr_cont, snr_lines, magnitude, depth, field code...) at
        these edges; both None: one bin, the whole survey. ``by`` None with edges bins by ``z_true``.
    tol, form
        Good means ``|dz| < tol (1 + z_true)`` (``"relative"``, B26) or ``|dz| < tol`` (``"absolute"``, U25).
    nmad
        MAE rejection: relative errors above ``nmad`` x MAD are dropped (B26 Eq. 11, the literal rule).

    Returns
    -------
    xarray.Dataset over ``bin``: ``bin_lo``, ``bin_hi``, ``n``, ``n_good``, ``gf``, ``gf_lo``, ``gf_hi``, ``mae``,
    ``n_mae``, ``error_median`` and ``error_mad``.
    """
    edges_array = None if edges is None else np.asarray(edges, dtype=np.float64)
    if edges_array is not None and (edges_array.ndim != 1 or edges_array.size < 2 or np.any(np.diff(edges_array) <= 0)):
        raise ValueError(f"edges must be at least two increasing values, not {edges!r}")
    nbins = 1 if edges_array is None else edges_array.size - 1
    columns = [z_pred, z_true] if by is None else [z_pred, z_true, by]
    common = {"edges": edges_array, "nbins": nbins}
    counts = _block_sum(_gf_block, columns, (nbins, 2), tol=tol, form=form, **common)
    table = gf_from_partials(counts.astype(np.int64))
    shape = (nbins, ERROR_EDGES.size - 1)
    median = histogram_quantile(_block_sum(_error_block, columns, shape, centre=None, error_edges=ERROR_EDGES,
                                           **common), ERROR_EDGES, 0.5)
    mad = histogram_quantile(_block_sum(_error_block, columns, shape, centre=np.nan_to_num(median),
                                        error_edges=ERROR_EDGES, **common), ERROR_EDGES, 0.5)
    kept = _block_sum(_kept_block, columns, (nbins, 2), upper=np.nan_to_num(nmad * mad, nan=-1.0), **common)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.where(kept[:, 1] > 0, kept[:, 0] / np.maximum(kept[:, 1], 1), np.nan)
    lo = np.array([-np.inf]) if edges_array is None else edges_array[:-1]
    hi = np.array([np.inf]) if edges_array is None else edges_array[1:]
    name = "all" if by is None and edges_array is None else str(getattr(by, "name", None) or "z_true")
    return xr.Dataset(
        {"bin_lo": ("bin", lo), "bin_hi": ("bin", hi), "n": ("bin", table["n"]), "n_good": ("bin", table["n_good"]),
         "gf": ("bin", table["gf"]), "gf_lo": ("bin", table["gf_lo"]), "gf_hi": ("bin", table["gf_hi"]),
         "mae": ("bin", mae), "n_mae": ("bin", kept[:, 1].astype(np.int64)), "error_median": ("bin", median),
         "error_mad": ("bin", mad)},
        attrs={"statistic": "good_fraction", "by": name, "tol": tol, "form": form, "nmad": nmad,
               "interval": "Wilson 68% (z_c = 1)",
               "mae_rule": "mean |dz|/(1+z) of spectra with it <= nmad x MAD; median and MAD from 0.5%-step "
                           "histograms"})


def threshold_table(score: xr.DataArray, positive: xr.DataArray, thresholds: Sequence[float] | np.ndarray, *,
                    marked: float | None = None) -> xr.Dataset:
    """Purity, completeness (TPR) and FPR of ``score > t`` over a sweep of thresholds, with the ROC's AUC and the
    threshold nearest to (FPR, TPR) = (0, 1) as attrs (METHODS §3.5-3.7).

    ``positive`` says what a selection should find: real sources for the true/false separation (B26 §4.3),
    correctly measured LAEs for U25's Fig. 5. ``marked`` adds the values at that threshold to the attrs.
    """
    thresholds = np.unique(np.asarray(thresholds, dtype=np.float64))
    if marked is not None:
        thresholds = np.unique(np.append(thresholds, marked))
    counts = _block_sum(lambda s, p: threshold_partial(s, p, thresholds), [score, positive], (thresholds.size, 4))
    table = threshold_from_partials(counts.astype(np.int64))
    best = nearest_to_corner(table["fpr"], table["completeness"])
    attrs = {"statistic": "threshold", "auc": auc(table["fpr"], table["completeness"]),
             "best_threshold": float(thresholds[best]), "best_tpr": float(table["completeness"][best]),
             "best_fpr": float(table["fpr"][best]), "n_positive": int(counts[0, 2]), "n_negative": int(counts[0, 3])}
    if marked is not None:
        at = int(np.searchsorted(thresholds, marked))
        attrs.update(marked=float(marked), purity_at_marked=float(table["purity"][at]),
                     completeness_at_marked=float(table["completeness"][at]), fpr_at_marked=float(table["fpr"][at]))
    return xr.Dataset({name: ("threshold", values) for name, values in table.items()},
                      coords={"threshold": thresholds}, attrs=attrs)


def class_histograms(values: xr.DataArray, classes: xr.DataArray, class_names: Sequence[str],
                     edges: Sequence[float] | np.ndarray) -> xr.Dataset:
    """Histogram of a per-spectrum quantity (e.g. log10 of the NMF significance) per integer class, with the edges."""
    edges = np.asarray(edges, dtype=np.float64)
    counts = _block_sum(lambda v, c: class_histogram_partial(v, c, len(class_names), edges), [values, classes],
                        (len(class_names), edges.size - 1))
    # classes as integer codes with CF flag_meanings, as in the spectra (fixed-width strings have no Zarr v3 spec)
    return xr.Dataset({"count": (("class", "bin"), counts.astype(np.int64)), "bin_lo": ("bin", edges[:-1]),
                       "bin_hi": ("bin", edges[1:])}, coords={"class": np.arange(len(class_names))},
                      attrs={"statistic": "class_histogram", "quantity": str(getattr(values, "name", "")),
                             "flag_meanings": " ".join(class_names)})


def zp_zt_table(z_pred: xr.DataArray, z_true: xr.DataArray, edges: Sequence[float] | np.ndarray) -> xr.Dataset:
    """Counts of (z_true, z_pred) on a square grid of ``edges``: the zp-versus-zt figure as a density, which stays
    the same size for any number of spectra."""
    edges = np.asarray(edges, dtype=np.float64)
    nbins = edges.size - 1
    counts = _block_sum(lambda p, t: class_histogram_partial(p, bin_index(t, edges), nbins, edges), [z_pred, z_true],
                        (nbins, nbins))
    return xr.Dataset({"count": (("z_true_bin", "z_pred_bin"), counts.astype(np.int64)), "edges": ("edge", edges)},
                      attrs={"statistic": "zp_zt"})


def write_table(table: xr.Dataset, store: str | PathLike[str], name: str) -> str:
    """Store a table in ``store`` under ``stats/<name>``, replacing an older one; the group path is returned."""
    group = f"stats/{name}"
    table.to_zarr(str(store), group=group, mode="w", consolidated=False)
    return group


def open_columns(store: str | PathLike[str], results: str, group: str | None = None) -> xr.Dataset:
    """A result group and its spectra's per-spectrum columns (truth, S/N, magnitudes...) in one lazy Dataset."""
    path = str(Path(store))
    out = zstore.open_results(path, results)
    input_group = out.attrs.get("input_group", group)
    spectra = zstore.open_spectra(path, input_group)
    per_spectrum = {name: spectra[name] for name in spectra.variables
                    if spectra[name].dims == ("spectrum",) and name not in out.variables}
    return out.assign(per_spectrum)


#: At most this many distinct values of a ``split`` column without edges.
MAX_SPLIT_VALUES = 32


def parse_bins(text: str) -> tuple[str, np.ndarray | None]:
    """``"column"`` or ``"column:e0,e1,...,en"`` (``inf`` allowed) -> (column, edges or None).

    Examples
    --------
    >>> parse_bins("snr_lines:0,3,7,inf")
    ('snr_lines', array([ 0.,  3.,  7., inf]))
    """
    name, _, edges = text.partition(":")
    if not edges:
        return name, None
    try:
        return name, np.array([float(e) for e in edges.split(",")])
    except ValueError:
        raise ValueError(f"bins {text!r}: edges must be numbers separated by commas") from None


def _auto_edges(column: xr.DataArray, nbins: int) -> np.ndarray:
    """``nbins`` equal bins between the finite minimum and maximum (two lazy reductions)."""
    finite = column.where(np.isfinite(column))
    lo, hi = (float(v) for v in da.compute(finite.min().data, finite.max().data))
    if not np.isfinite(lo) or hi <= lo:
        raise ValueError(f"{column.name}: no finite range to bin ({lo}, {hi})")
    return np.linspace(lo, hi, nbins + 1)


def _column(columns: xr.Dataset, name: str, where: str) -> xr.DataArray:
    if name not in columns.variables:
        per_spectrum = sorted(n for n in columns.variables if columns[n].dims == ("spectrum",))
        raise StoreError(f"{where}: no per-spectrum column {name!r}; there are {per_spectrum}")
    return columns[name]


def survey_report(store: str | PathLike[str], results: str, *, by: Sequence[str] = (), split: str | None = None,
                  score: str | None = None, log10: bool = False, thresholds: np.ndarray | None = None,
                  marked: float | None = None, positive: str = "source",
                  false_classes: Sequence[str] = ("false_source",), z: str = "z", truth: str = "z_true",
                  tol: float = 0.005, form: str = "relative", nbins: int = 8, zp_zt_max: float = 7.0,
                  rows: slice | None = None, name: str | None = None,
                  figures: str | PathLike[str] | None = None, write: bool = True) -> dict[str, xr.Dataset]:
    """The survey statistics of one result group, as ``dzspec stats`` computes them.

    Parameters
    ----------
    store, results
        The store and its result group (``results/<grid>/<kernel>``); the spectra's per-spectrum columns (truth,
        S/N, magnitudes, depth...) are joined to it.
    by
        GF/MAE tables binned by each of these columns (``"column"`` for ``nbins`` equal bins or
        ``"column:e0,e1,..."``); the overall table is always made.
    split
        Also make every table once per value of this column (at most 32 distinct values, e.g. a field code) or,
        as ``"column:e0,e1,..."``, per bin of it (e.g. ``depth_hours:0,5,20,200`` for the survey depths).
    score, log10, thresholds, marked
        A detection score (e.g. ``nmf_significance`` with ``log10`` for B26's true/false sources, or
        ``lae_abs_dchi2_cal``): the purity/completeness/ROC sweep over ``thresholds``, its values at ``marked``, and
        its histogram per ``sim_class`` when the store has one.
    zp_zt_max
        The zp-versus-zt density covers 0 to this redshift on both axes (280 x 280 cells).
    rows
        Only these rows of the store (e.g. a held-out test set).
    positive
        What the score should select: ``"source"`` (sim_class not in ``false_classes``, B26 §4.3) or
        ``"correct"`` (a redshift within the GF tolerance, U25 Fig. 5).
    name, figures, write
        Tables go to ``stats/<name>/<table>`` (default name: the result group's last part) when ``write``;
        PNG figures to ``figures`` when given.

    Returns
    -------
    The tables by name (``zp_zt``, ``gf_all``, ``gf_<column>``, ``threshold_<score>``, ``hist_<score>``; with
    ``split``, a ``_<split><value>`` suffix per value).
    """
    columns = open_columns(store, results)
    if rows is not None:
        columns = columns.isel(spectrum=rows)
    where = f"{store}/{results}"
    z_pred, z_true = _column(columns, z, where), _column(columns, truth, where)
    bins = [parse_bins(text) for text in by]
    bins = [(column, edges if edges is not None else _auto_edges(_column(columns, column, where), nbins))
            for column, edges in bins]
    subsets: dict[str, xr.DataArray] = {"": z_true}
    if split is not None:
        split_name, split_edges = parse_bins(split)
        split_column = _column(columns, split_name, where)
        if split_edges is None:
            values = np.unique(da.compute(split_column.data)[0])
            values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            if values.size > MAX_SPLIT_VALUES:
                raise StoreError(f"{where}: {split_name} has {values.size} distinct values; give edges "
                                 f"({split_name}:e0,e1,...) to split it into bins")
            subsets.update({f"_{split_name}{v:g}": z_true.where(split_column == v) for v in values})
        else:
            for lo, hi in itertools.pairwise(split_edges):
                inside = (split_column >= lo) & (split_column < hi)
                subsets[f"_{split_name}{lo:g}-{hi:g}"] = z_true.where(inside)
    tables: dict[str, xr.Dataset] = {}
    tables["zp_zt"] = zp_zt_table(z_pred, z_true, np.linspace(0.0, float(zp_zt_max), 281))
    for suffix, subset in subsets.items():
        tables[f"gf_all{suffix}"] = good_fraction_table(z_pred, subset, tol=tol, form=form)
        for column, edges in bins:
            tables[f"gf_{column}{suffix}"] = good_fraction_table(z_pred, subset, _column(columns, column, where), edges,
                                                                 tol=tol, form=form)
    classes = columns["sim_class"] if "sim_class" in columns.variables else None
    class_names = classes.attrs.get("flag_meanings", "").split() if classes is not None else []
    if score is not None:
        values = _column(columns, score, where)
        if log10:
            values = np.log10(values.where(values > 0))
        if positive == "source":
            if classes is None:
                raise StoreError(f"{where}: positive='source' needs a sim_class column")
            unknown = set(false_classes) - set(class_names)
            if unknown:
                raise ValueError(f"{where}: no class {sorted(unknown)} among {class_names}")
            wanted = xr.DataArray(np.array([class_names.index(c) for c in false_classes]), dims="false_class")
            is_positive = ~(classes == wanted).any("false_class")
        elif positive == "correct":
            scale = (1.0 + z_true) if form == "relative" else 1.0
            is_positive = np.isfinite(z_true) & (abs(z_pred - z_true) < tol * scale)
        else:
            raise ValueError(f"positive must be 'source' or 'correct', not {positive!r}")
        thresholds = (np.linspace(*(float(v) for v in _auto_edges(values, 1)), 101) if thresholds is None
                      else np.asarray(thresholds, dtype=np.float64))
        label = f"{'log10_' if log10 else ''}{score}"
        tables[f"threshold_{label}"] = threshold_table(values, is_positive, thresholds, marked=marked)
        if classes is not None:
            tables[f"hist_{label}"] = class_histograms(values.rename(label), classes, class_names,
                                                       np.linspace(thresholds.min(), thresholds.max(), 61))
    name = name or results.rstrip("/").rsplit("/", 1)[-1]
    row_text = "all" if rows is None else f"{rows.start or 0}:{'' if rows.stop is None else rows.stop}"
    for key, table in tables.items():
        table.attrs.update(results=results, truth=truth, z=z, rows=row_text)
        if write:
            write_table(table, store, f"{name}/{key}")
    if figures is not None:
        _figures(tables, list(subsets), Path(figures), marked)
    return tables


def _figures(tables: Mapping[str, xr.Dataset], suffixes: Sequence[str], out: Path, marked: float | None) -> None:
    """One PNG per table kind; GF tables of every split value share a figure."""
    from dzspec.viz.stats import plot_class_histograms, plot_good_fraction, plot_threshold, plot_zp_zt_density

    out.mkdir(parents=True, exist_ok=True)
    for key, table in tables.items():
        if key.startswith("gf_") and not any(s and key.endswith(s) for s in suffixes) and table.sizes["bin"] > 1:
            lines = {(s[1:] if s else "all"): tables[key + s] for s in suffixes}
            plot_good_fraction(lines, out / f"{key}.png", title=str(table.attrs.get("results", "")))
        elif key.startswith("threshold_"):
            plot_threshold(table, out / f"{key}.png", xlabel=key.removeprefix("threshold_"))
        elif key.startswith("hist_"):
            plot_class_histograms(table, out / f"{key}.png", marked=marked)
        elif key == "zp_zt":
            plot_zp_zt_density(table, out / "zp_zt.png", title=str(table.attrs.get("results", "")))
