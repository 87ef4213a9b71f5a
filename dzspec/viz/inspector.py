"""``dzspec inspect``: a spectral inspector in the browser (a Bokeh server application), with visual inspection.

The page goes through the spectra of one spectra group with the fit of one results group: the flux with its 1-sigma
band, the best-fit model (NMF: the model and its nuisance part; MADGICS: the model, its sky-residual and LAE
components), rest-frame lines (:data:`LINES`) marked at the redshift, and chi2(z) (NMF) or Δχ²(z) (MADGICS) with the
scan's candidates. The curve is the stored ``zchi2`` when the run kept it, else it is recomputed for the spectrum
shown, with the run's own model and parameters (:func:`dzspec.model_spectra.rescan`, cached per row).

Filters (ZWARN, class and truth where the store has them, a score range, a z range, inspected or not) choose which
rows the page steps through; the keys are

=================  ========================================================================================
``j`` / ``→``      next spectrum
``k`` / ``←``      previous spectrum
``1`` ... ``4``,   save the inspection with this quality flag (MARZ QOP, :data:`~dzspec.io.vi.VI_FLAGS`), with
``0``, ``6``       the redshift and comment in the boxes, and go to the next spectrum (as MARZ does)
``s``              save with the flag selected
``c``              put the next candidate redshift in the override box
=================  ========================================================================================

(keys typed into a text box stay in the box). A click on the chi2 plot puts the candidate nearest to it (or the
lowest point of the curve near the click) in the override box. Inspections go to the store's ``vi`` group
(:mod:`dzspec.io.vi`) and are shown again when the spectrum is, after a restart too.

Bokeh has no global key events, so a small script on the page listens to the document's ``keydown`` and writes the
key into a hidden ``Div``'s text; the server reacts to that property change (:meth:`Inspector.key`). Every action
of the page is a plain method of :class:`Inspector`, so the tests drive it in process as well as in a real browser.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io import vi as zvi
from dzspec.kernels.simulate.common import ABSORPTION_LINES, EMISSION_LINES
from dzspec.parallel.confidence import right_redshifts
from dzspec.results_schema import ENGINES, REDSHIFT_DIM, best_redshift_name

__all__ = ["LINES", "Inspector", "inspector_server", "make_document", "resolve_inspection", "serve_inspector"]

#: Rest-frame vacuum lines marked at the redshift: (label, wavelength in Angstrom, "emission" or "absorption").
#: The wavelengths are the simulators' (:data:`~dzspec.kernels.simulate.common.EMISSION_LINES` and
#: ``ABSORPTION_LINES``); the second line of a close doublet has no label of its own.
LINES: tuple[tuple[str, float, str], ...] = tuple(
    (label, table[name], kind)
    for label, name, table, kind in (
        ("Ly\N{GREEK SMALL LETTER ALPHA}", "lya", EMISSION_LINES, "emission"),
        ("CIV", "civ_1548", EMISSION_LINES, "emission"),
        ("", "civ_1551", EMISSION_LINES, "emission"),
        ("MgII", "mgii_2796", EMISSION_LINES, "emission"),
        ("", "mgii_2804", EMISSION_LINES, "emission"),
        ("[OII]", "oii_3726", EMISSION_LINES, "emission"),
        ("", "oii_3729", EMISSION_LINES, "emission"),
        ("K", "cak_3934", ABSORPTION_LINES, "absorption"),
        ("H", "cah_3969", ABSORPTION_LINES, "absorption"),
        ("H\N{GREEK SMALL LETTER BETA}", "hbeta", EMISSION_LINES, "emission"),
        ("", "oiii_4959", EMISSION_LINES, "emission"),
        ("[OIII]", "oiii_5007", EMISSION_LINES, "emission"),
        ("", "nii_6548", EMISSION_LINES, "emission"),
        ("H\N{GREEK SMALL LETTER ALPHA}", "halpha", EMISSION_LINES, "emission"),
        ("[NII]", "nii_6584", EMISSION_LINES, "emission"),
        ("[SII]", "sii_6716", EMISSION_LINES, "emission"),
        ("", "sii_6731", EMISSION_LINES, "emission"),
    )
)

#: Keys the page reacts to (``event.key`` of the browser).
KEYS: tuple[str, ...] = ("j", "k", "ArrowRight", "ArrowLeft", "s", "c", *(str(flag) for flag in zvi.VI_FLAGS))

#: A redshift is right when ``|z - z_true| < TRUTH_TOL (1 + z_true)`` (B26's tolerance).
TRUTH_TOL = 0.005

_ZWARN_CHOICES = ("any", "ZWARN == 0", "ZWARN != 0")
_INSPECTED_CHOICES = ("any", "not inspected", "inspected")
_TRUTH_CHOICES = ("any", "right", "wrong")
_SMOOTHING = ("none", "3", "5", "9", "15")
#: Wavelength views: the whole grid (kept as zoomed from row to row), or re-centred on Ly-alpha at each row's z
#: (the default for LAE results, whose line is a few Angstrom wide on a 6000 Angstrom grid).
_VIEWS = ("full", "Ly\N{GREEK SMALL LETTER ALPHA} ± 100 Å")
_LYA = EMISSION_LINES["lya"]
_FLUX_UNIT = "1e-17 erg s⁻¹ cm⁻² Å⁻¹"
#: Widths (px) of the plots and of the side panel: the page fits a 1440 px wide window.
_MAIN, _SIDE = 980, 390
_HALF = _SIDE // 2 - 10
#: Spectra whose fits stay cached in one page (a MUSE rescan takes about half a second).
_FIT_CACHE = 64
_KEY_SCRIPT = """
// Bokeh has no global key events: forward the keys the page uses to the server through a hidden Div.
if (window.__dzspec_keys) { window.__dzspec_keys.channel = channel; return; }
const state = {channel: channel, n: 0};
window.__dzspec_keys = state;
const wanted = new Set(keys);
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !wanted.has(event.key)) return;
  const target = event.composedPath()[0];  // inside Bokeh's shadow roots, not the host element
  const tag = target && target.tagName ? target.tagName.toUpperCase() : "";
  if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable)) return;
  event.preventDefault();
  state.n += 1;
  state.channel.text = event.key + " " + state.n;
});
"""


# ----------------------------------------------------------------------------------------------- store side


def resolve_inspection(store: str | PathLike[str], group: str | None = None,
                       results: str | None = None) -> tuple[str, str]:
    """The spectra group and results group to inspect: ``(spectra/<grid>, results/...)``.

    ``results`` may be a path (``results/<grid>/<kernel>``), a path under ``results/``, or a kernel name
    (``nmf_zfind``); unnamed, it is the engine's default group of the spectra group, ``results/<grid>/nmf_zfind``
    first, then ``results/<grid>/madgics_lae``, else the only results group of an engine computed on it. The
    spectra group is the results' input, or the given one, or the store's only one (or the only one with results
    of an engine).

    Raises
    ------
    StoreError
        No such group, no results to inspect, or the results were computed on another spectra group.
    """
    root = zstore.open_root(store)
    if results is None:
        try:
            spectra = zstore.resolve_spectra_group(root, group)
        except StoreError:  # several spectra groups (coadds and exposures ...): the one with results, if only one
            inputs = {str(res.attrs.get("input_group")) for _, res in zstore.results_groups(root)
                      if res.attrs.get("kernel") in ENGINES}
            if group is not None or len(inputs) != 1:
                raise
            spectra = inputs.pop()
        grid = spectra.removeprefix("spectra/")
        for engine in ENGINES:
            if f"results/{grid}/{engine}" in root:
                return spectra, f"results/{grid}/{engine}"
        found = [path for path, res in zstore.results_groups(root)
                 if res.attrs.get("input_group") == spectra and res.attrs.get("kernel") in ENGINES]
        if len(found) != 1:
            raise StoreError(f"{store}: {len(found) or 'no'} results groups of {spectra} to inspect {found or ''}; "
                             + ("choose one with --results" if found else "run dzspec zfind or dzspec lae first"))
        return spectra, found[0]
    known = [path for path, _ in zstore.results_groups(root)]
    name = results.strip("/")
    candidates = [name, f"results/{name}"]
    if group is not None:
        candidates.append(f"results/{zstore.resolve_spectra_group(root, group).removeprefix('spectra/')}/{name}")
    else:
        named = [path for path in known if path.rsplit("/", 1)[-1] == name]
        if len(named) > 1 and not set(candidates) & set(known):
            raise StoreError(f"{store}: several results groups named {name!r} {named}; choose one with --group")
        candidates += named
    path = next((c for c in candidates if c in known), None)
    if path is None:
        raise StoreError(f"{store}: no results group {results!r}; the store has {known}")
    spectra = str(root[path].attrs.get("input_group") or zstore.resolve_spectra_group(root, group))
    if group is not None and zstore.resolve_spectra_group(root, group) != spectra:
        raise StoreError(f"{store}/{path} was computed on {spectra}, not on {group}")
    return spectra, path


@dataclass
class _Fit:
    """What the plots show beside the data for one row: model components, the chi2 curve, and why not."""

    models: dict[str, np.ndarray] = field(default_factory=dict)
    redshift: np.ndarray | None = None
    curve: np.ndarray | None = None
    quantity: str = "chi2"
    note: str = ""


def _smooth(flux: np.ndarray, ivar: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted boxcar of ``width`` pixels: (flux, ivar of that mean)."""
    if width <= 1:
        return flux, ivar
    kernel = np.ones(width)
    weight = np.convolve(ivar, kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.convolve(np.where(ivar > 0, flux * ivar, 0.0), kernel, mode="same") / weight
    return np.where(weight > 0, mean, np.nan), weight


def _float(text: str) -> float | None:
    """A number typed into a box; None when blank. Raises ValueError for anything else."""
    text = text.strip()
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _fmt(value: float | None, spec: str = ".5f") -> str:
    return "—" if value is None or not np.isfinite(value) else format(value, spec)


# ----------------------------------------------------------------------------------------------- the page


class Inspector:
    """One page of the inspector: its data, its Bokeh models, and its actions as plain methods.

    Parameters
    ----------
    store
        The store.
    group, results
        Spectra group and results group (:func:`resolve_inspection`).
    who
        Name saved with the inspections (default: the login name).
    where
        Only the rows for which this expression over the results' per-spectrum fields holds (as
        :func:`dzspec.model_spectra.select_rows` reads it, e.g. ``"zwarn == 0 and z > 3"``).
    compute_models
        Rebuild the model and chi2 curve of each row shown (default); False shows the data and the stored curve
        only.

    Attributes
    ----------
    rows : numpy.ndarray
        Store rows that pass the filters, in store order; the page steps through them.
    position : int
        Index in ``rows`` of the spectrum shown.
    layout
        The Bokeh layout (add it to a document with :func:`make_document`).
    """

    def __init__(self, store: str | PathLike[str], *, group: str | None = None, results: str | None = None,
                 who: str | None = None, where: str | None = None, compute_models: bool = True) -> None:
        self.store = str(store)
        self.group, self.results = resolve_inspection(store, group, results)
        self.who = who or zvi.default_inspector()
        self.compute_models = compute_models
        root = zstore.open_root(store)
        self._spectra = root[self.group]
        self.kernel = str(root[self.results].attrs.get("kernel", self.results.rsplit("/", 1)[-1]))
        self.wavelength = np.asarray(self._spectra["wavelength"][:], dtype=np.float64)
        self._results = zstore.open_results(store, self.results)
        self.nspectrum = int(self._results.sizes["spectrum"])
        self._columns: dict[str, np.ndarray] = {}
        self.z = self._column(best_redshift_name(self._results.data_vars))  # z_refined for NMF: ZERR's, export's Z
        self.zwarn = self._column("zwarn", fill=0).astype(np.int64)
        self.targetid = np.asarray(self._spectra["targetid"][:]) if "targetid" in self._spectra else \
            self._column("targetid", fill=-1)
        self.z_true = (np.asarray(self._spectra["z_true"][:], dtype=np.float64) if "z_true" in self._spectra
                       else np.full(self.nspectrum, np.nan))
        self.class_name, self.class_codes, self._class_values, self.class_labels = self._class_coordinate()
        self.score_names = [name for name, var in self._results.data_vars.items()
                            if var.dims == ("spectrum",) and var.dtype.kind == "f" and name != "z"]
        self.stored_curve = "zchi2" in self._results and REDSHIFT_DIM in self._results["zchi2"].coords
        self.flags = zvi.inspection_flags(store, self.results)
        self.base_rows = np.arange(self.nspectrum)
        if where:
            from dzspec.model_spectra import select_rows

            self.base_rows = select_rows(store, self.results, "all", where=where)
        self.rows = self.base_rows
        self.position = 0
        self._fits: OrderedDict[int, _Fit] = OrderedDict()
        self._chunk: tuple[int, int, np.ndarray, np.ndarray] | None = None
        self._build()
        self.apply_filters()

    # ------------------------------------------------------------------------------------------- data

    def _column(self, name: str, fill: float = np.nan) -> np.ndarray:
        """A per-spectrum field of the results (read once), ``fill`` where the group lacks it."""
        if name not in self._columns:
            if name in self._results:
                self._columns[name] = np.asarray(self._results[name].values)
            else:
                self._columns[name] = np.full(self.nspectrum, fill)
        return self._columns[name]

    def _class_coordinate(self) -> tuple[str | None, np.ndarray, np.ndarray, list[str]]:
        """A per-spectrum class code of the spectra group (``sim_class`` ...) with its CF meanings, if any:
        (name, per-row codes, code values, their names)."""
        for name, array in sorted(self._spectra.arrays()):
            attrs = dict(array.attrs)
            integer = isinstance(array.dtype, np.dtype) and array.dtype.kind in "iu"
            if "class" in name and array.ndim == 1 and integer and "flag_meanings" in attrs:
                meanings = str(attrs["flag_meanings"]).split()
                values = np.asarray(attrs.get("flag_values", range(len(meanings))), dtype=np.int64)
                labels = [meanings[i] if i < len(meanings) else str(v) for i, v in enumerate(values)]
                return name, np.asarray(array[:]).astype(np.int64), values, labels
        return None, np.zeros(0, np.int64), np.zeros(0, np.int64), []

    def _pixels(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Flux and ivar of a row; the whole chunk is read once (one Zarr chunk decodes as a whole anyway)."""
        if self._chunk is None or not self._chunk[0] <= row < self._chunk[1]:
            rows = int(self._spectra["flux"].chunks[0])
            start = row - row % rows
            stop = min(start + rows, self.nspectrum)
            self._chunk = (start, stop, np.asarray(self._spectra["flux"][start:stop], np.float64),
                           np.asarray(self._spectra["ivar"][start:stop], np.float64))
        start, _, flux, ivar = self._chunk
        return flux[row - start], ivar[row - start]

    def candidates(self, row: int) -> np.ndarray:
        """Finite candidate redshifts of a row, best first."""
        if "candidate_z" not in self._results:
            return np.zeros(0)
        values = np.asarray(self._results["candidate_z"][row].values, dtype=np.float64)
        return values[np.isfinite(values)]

    def fit(self, row: int) -> _Fit:
        """Model components and chi2 curve of a row (cached): the stored curve when the run kept it, the model
        from :func:`dzspec.model_spectra.model_spectra` (NMF, no rescan needed) or a rescan."""
        if row in self._fits:
            self._fits.move_to_end(row)
            return self._fits[row]
        fit = _Fit(quantity="dchi2" if self.kernel == "madgics_lae" else "chi2")
        if self.stored_curve:
            attrs = self._results["zchi2"].attrs
            fit.redshift = np.asarray(self._results["zchi2"][REDSHIFT_DIM].values, dtype=np.float64)
            fit.curve = np.asarray(self._results["zchi2"][row].values, dtype=np.float64)
            fit.note = f"stored chi2 curve (decimated by {attrs.get('decimate', 1)})"
        if self.compute_models:
            try:
                from dzspec.model_spectra import model_spectra, rescan

                if self.stored_curve and self.kernel == "nmf_zfind":
                    ds = model_spectra(self.store, self.results, [row])
                else:
                    ds = rescan(self.store, self.results, [row])
                    fit.redshift = np.asarray(ds["redshift"].values, dtype=np.float64)
                    fit.curve = np.asarray(ds["zchi2"].values[0], dtype=np.float64)
                    fit.quantity = str(ds["zchi2"].attrs.get("quantity", fit.quantity))
                    fit.note = ("Δχ²" if fit.quantity == "dchi2" else "chi2") + " curve recomputed with the run's model"
                fit.models = {name: np.asarray(ds[name].values[0], dtype=np.float64)
                              for name in ds.data_vars if name.startswith("model")}
            except Exception as exc:  # a missing model store must not take the page down
                fit.note = (f"{fit.note}; " if fit.note else "") + f"no model: {type(exc).__name__}: {exc}"
        self._fits[row] = fit
        if len(self._fits) > _FIT_CACHE:
            self._fits.popitem(last=False)
        return fit

    # ------------------------------------------------------------------------------------------- layout

    def _build(self) -> None:
        from bokeh.events import Tap
        from bokeh.layouts import column, row
        from bokeh.models import (
            Button,
            ColumnDataSource,
            Div,
            LabelSet,
            MultiChoice,
            RadioButtonGroup,
            Range1d,
            Select,
            Span,
            TextInput,
        )
        from bokeh.plotting import figure

        self.info = Div(text="", width=_MAIN)
        self.message = Div(text="", width=_MAIN, styles={"color": "#a33"})
        tools = "xpan,xwheel_zoom,box_zoom,reset,save"
        wmin, wmax = float(np.nanmin(self.wavelength)), float(np.nanmax(self.wavelength))
        self.spectrum_figure = figure(width=_MAIN, height=380, tools=tools, active_scroll="xwheel_zoom",
                                      x_range=Range1d(wmin, wmax), y_range=Range1d(-1.0, 1.0),
                                      x_axis_label="observed wavelength (Å, vacuum)",
                                      y_axis_label=f"flux ({_FLUX_UNIT})")
        fig = self.spectrum_figure
        self.spectrum_source = ColumnDataSource({"wavelength": [], "flux": [], "lower": [], "upper": []})
        self.model_source = ColumnDataSource({"wavelength": [], "model": [], "model_nuisance": [], "model_sky": [],
                                              "model_lae": []})
        self.line_source = ColumnDataSource({"x": [], "y0": [], "y1": [], "ytext": [], "label": [], "color": []})
        fig.varea("wavelength", "lower", "upper", source=self.spectrum_source, fill_color="#6baed6",
                  fill_alpha=0.45, legend_label="flux ± 1\N{GREEK SMALL LETTER SIGMA}")
        fig.line("wavelength", "flux", source=self.spectrum_source, color="#222222", line_width=1,
                 legend_label="flux")
        # the components this engine's fits have (dzspec.model_spectra): NMF model and its nuisance part,
        # MADGICS model, sky residual and LAE component
        styles = {
            "model": ("model", {"color": "#d62728", "line_width": 1.6}),
            "model_nuisance": ("nuisance part", {"color": "#ff7f0e", "line_dash": "dashed"}),
            "model_sky": ("sky residual", {"color": "#2ca02c"}),
            "model_lae": ("LAE component", {"color": "#9467bd", "line_width": 1.4}),
        }
        names = ("model", "model_sky", "model_lae") if self.kernel == "madgics_lae" else ("model", "model_nuisance")
        self.model_renderers = {name: fig.line("wavelength", name, source=self.model_source,
                                               legend_label=styles[name][0], **styles[name][1]) for name in names}
        fig.segment("x", "y0", "x", "y1", source=self.line_source, color="color", line_dash="dashed",
                    line_alpha=0.7)
        fig.add_layout(LabelSet(x="x", y="ytext", text="label", source=self.line_source, text_font_size="9pt",
                                text_color="color", x_offset=2, text_baseline="top"))
        fig.legend.click_policy = "hide"
        fig.legend.location = "top_left"
        fig.legend.label_text_font_size = "8pt"
        fig.legend.background_fill_alpha = 0.6

        ylabel = "Δχ² (LAE component)" if self.kernel == "madgics_lae" else "χ²"
        self.chi2_figure = figure(width=_MAIN, height=250, tools="xpan,xwheel_zoom,box_zoom,reset,save",
                                  active_scroll="xwheel_zoom", x_axis_label="redshift", y_axis_label=ylabel)
        chi2 = self.chi2_figure
        self.curve_source = ColumnDataSource({"z": [], "chi2": []})
        self.candidate_source = ColumnDataSource({"z": [], "chi2": [], "label": []})
        chi2.line("z", "chi2", source=self.curve_source, color="#222222")
        chi2.scatter("z", "chi2", source=self.candidate_source, size=9, fill_color="#ff7f0e", line_color="black",
                     legend_label="candidates (click: use as z)")
        chi2.add_layout(LabelSet(x="z", y="chi2", text="label", source=self.candidate_source, x_offset=5,
                                 y_offset=4, text_font_size="8pt"))
        self.z_span = Span(location=0.0, dimension="height", line_color="#d62728", line_width=1.5, visible=False)
        self.truth_span = Span(location=0.0, dimension="height", line_color="#2ca02c", line_dash="dashed",
                               line_width=1.5, visible=False)
        self.override_span = Span(location=0.0, dimension="height", line_color="#9467bd", line_dash="dotdash",
                                  line_width=2, visible=False)
        for span in (self.z_span, self.truth_span, self.override_span):
            chi2.add_layout(span)
        chi2.legend.location = "bottom_right"
        chi2.legend.label_text_font_size = "8pt"
        chi2.on_event(Tap, lambda event: self.pick_redshift(float(event.x)))

        # navigation
        self.previous_button = Button(label="◀ previous (k)", width=120)
        self.next_button = Button(label="next (j) ▶", width=120)
        self.previous_button.on_click(self.previous)
        self.next_button.on_click(self.next)
        self.goto_input = TextInput(title="go to row", width=90, placeholder="row")
        self.goto_input.on_change("value", lambda attr, old, new: self._goto_text(new))
        self.smooth_select = Select(title="smooth (px)", value="none", options=list(_SMOOTHING), width=90)
        self.smooth_select.on_change("value", lambda attr, old, new: self.show())
        self.view_select = Select(title="view", value=_VIEWS[1] if self.kernel == "madgics_lae" else _VIEWS[0],
                                  options=list(_VIEWS), width=130)
        self.view_select.on_change("value", lambda attr, old, new: self._view_changed())

        # filters
        def refilter(attr: str, old: Any, new: Any) -> None:
            self.apply_filters()

        self.zwarn_select = Select(title="ZWARN", value="any", options=list(_ZWARN_CHOICES), width=_HALF)
        self.inspected_select = Select(title="inspected", value="any", options=list(_INSPECTED_CHOICES), width=_HALF)
        self.truth_select = Select(title=f"z vs z_true (|Δz| < {TRUTH_TOL}(1+z))", value="any",
                                   options=list(_TRUTH_CHOICES), width=_SIDE,
                                   visible=bool(np.isfinite(self.z_true).any()))
        self.class_choice = MultiChoice(title=f"class ({self.class_name})", options=self.class_labels, value=[],
                                        width=_SIDE, visible=self.class_name is not None)
        default_score = next((n for n in ("confidence", "lae_abs_dchi2_cal", "deltachi2")
                              if n in self.score_names and np.isfinite(self._column(n)).any()),
                             self.score_names[0] if self.score_names else "")
        self.score_select = Select(title="score", value=default_score, options=self.score_names, width=_SIDE,
                                   visible=bool(self.score_names))
        self.score_min = TextInput(title="score ≥", width=_HALF, placeholder="any")
        self.score_max = TextInput(title="score ≤", width=_HALF, placeholder="any")
        self.z_min = TextInput(title="z ≥", width=_HALF, placeholder="any")
        self.z_max = TextInput(title="z ≤", width=_HALF, placeholder="any")
        for widget in (self.zwarn_select, self.inspected_select, self.truth_select, self.score_select):
            widget.on_change("value", refilter)
        for widget in (self.score_min, self.score_max, self.z_min, self.z_max):
            widget.on_change("value", refilter)
        self.class_choice.on_change("value", refilter)

        # visual inspection
        self.flag_values = list(zvi.VI_FLAGS)
        names = {0: "0", 1: "1 no z", 2: "2 possible", 3: "3 probable", 4: "4 certain", 6: "6 star"}
        self.flag_group = RadioButtonGroup(labels=[names[v] for v in self.flag_values], active=None, width=_SIDE)
        self.z_input = TextInput(title="z override (blank: accept the fit's z)", width=_SIDE, placeholder="z override")
        self.z_input.on_change("value", lambda attr, old, new: self._override_typed())
        self.comment_input = TextInput(title="comment", width=_SIDE, placeholder="comment")
        self.save_button = Button(label="save inspection (s)", button_type="success", width=_SIDE)
        self.save_button.on_click(self.save)
        self.vi_status = Div(text="", width=_SIDE)
        keys = ("<b>keys</b>: j / → next, k / ← previous, 1-4, 0, 6: save with this flag and go on, s: save, "
                "c: next candidate as z. Flags (MARZ QOP): 4 certain (~99 %), 3 probable (~90 %), 2 possible "
                "(~50 %), 1 no redshift, 0 none given, 6 star.")
        self.help = Div(text=keys, width=_SIDE, styles={"font-size": "85%", "color": "#555"})
        # the keyboard channel: the page's keydown listener writes "<key> <n>" here
        self.key_channel = Div(text="", visible=False)
        self.key_channel.on_change("text", lambda attr, old, new: self.key(new.split(" ")[0]) if new else None)

        side = column(
            Div(text=f"<b>inspector</b>: {escape(self.who)}", width=_SIDE),
            Div(text="<b>visual inspection</b>", width=_SIDE), self.flag_group, self.z_input, self.comment_input,
            self.save_button, self.vi_status,
            Div(text="<b>filters</b>", width=_SIDE), row(self.zwarn_select, self.inspected_select),
            self.truth_select, self.class_choice, self.score_select, row(self.score_min, self.score_max),
            row(self.z_min, self.z_max), self.help, self.key_channel,
        )
        nav = row(self.previous_button, self.next_button, self.goto_input, self.smooth_select, self.view_select)
        self.layout = row(column(self.info, nav, self.message, self.spectrum_figure, self.chi2_figure), side)

    def keyboard_callback(self) -> Any:
        """The ``CustomJS`` that forwards the page's key presses to :meth:`key` (run on document ready)."""
        from bokeh.models import CustomJS

        return CustomJS(args={"channel": self.key_channel, "keys": list(KEYS)}, code=_KEY_SCRIPT)

    # ------------------------------------------------------------------------------------------- actions

    @property
    def row(self) -> int | None:
        """The store row shown (None when no row passes the filters)."""
        return int(self.rows[self.position]) if self.rows.size else None

    def next(self) -> None:
        """Show the next row that passes the filters."""
        self.show(self.position + 1)

    def previous(self) -> None:
        """Show the previous row that passes the filters."""
        self.show(self.position - 1)

    def go_to_row(self, row: int) -> None:
        """Show a store row (it must pass the filters)."""
        where = np.flatnonzero(self.rows == int(row))
        if not where.size:
            self.message.text = f"row {row} is not among the {self.rows.size} rows the filters let through"
            return
        self.show(int(where[0]))

    def _goto_text(self, text: str) -> None:
        try:
            value = _float(text)
        except ValueError:
            self.message.text = f"go to row: {escape(text)} is not a row number"
            return
        if value is not None:
            self.go_to_row(int(value))

    def key(self, key: str) -> None:
        """React to a key pressed on the page (see the module's table)."""
        if key in ("j", "ArrowRight"):
            self.next()
        elif key in ("k", "ArrowLeft"):
            self.previous()
        elif key == "s":
            self.save()
        elif key == "c":
            self.next_candidate()
        elif key.isdigit() and int(key) in zvi.VI_FLAGS:
            self.set_flag(int(key))
            if self.save():
                self.next()

    def set_flag(self, flag: int | None) -> None:
        """Select a quality flag (None: none selected)."""
        self.flag_group.active = None if flag is None else self.flag_values.index(int(flag))

    def selected_flag(self) -> int | None:
        """The quality flag selected on the page."""
        active = self.flag_group.active
        return None if active is None else self.flag_values[int(active)]

    def pick_redshift(self, z: float) -> None:
        """A click on the chi2 plot at ``z``: the nearest candidate within 2 % of the plotted range, else the lowest
        point of the curve within 0.5 % of it, else ``z`` itself, goes to the override box."""
        row = self.row
        if row is None or not math.isfinite(z):
            return
        fit = self.fit(row)
        span = 1.0
        if fit.redshift is not None and fit.redshift.size > 1:
            span = float(np.nanmax(fit.redshift) - np.nanmin(fit.redshift))
        candidates = self.candidates(row)
        chosen = z
        if candidates.size and np.min(np.abs(candidates - z)) < 0.02 * span:
            chosen = float(candidates[np.argmin(np.abs(candidates - z))])
        elif fit.curve is not None and fit.redshift is not None:
            near = np.flatnonzero(np.abs(fit.redshift - z) < 0.005 * span)
            finite = near[np.isfinite(fit.curve[near])] if near.size else near
            if finite.size:
                chosen = float(fit.redshift[finite[np.argmin(fit.curve[finite])]])
        self.z_input.value = f"{chosen:.5f}"

    def next_candidate(self) -> None:
        """Put the candidate after the one in the override box (the best first) into it."""
        row = self.row
        if row is None:
            return
        candidates = self.candidates(row)
        if not candidates.size:
            return
        try:
            current = _float(self.z_input.value)
        except ValueError:
            current = None
        index = 0
        if current is not None:
            match = np.flatnonzero(np.abs(candidates - current) < 5e-6)
            index = (int(match[0]) + 1) % candidates.size if match.size else 0
        self.z_input.value = f"{candidates[index]:.5f}"

    def apply_filters(self) -> None:
        """Recompute the rows that pass the filters and show the first (or stay on the row shown if it passes)."""
        keep = np.zeros(self.nspectrum, bool)
        keep[self.base_rows] = True
        zwarn = self.zwarn_select.value
        if zwarn == "ZWARN == 0":
            keep &= self.zwarn == 0
        elif zwarn == "ZWARN != 0":
            keep &= self.zwarn != 0
        inspected = self.inspected_select.value
        if inspected != "any":
            keep &= (self.flags >= 0) == (inspected == "inspected")
        truth = self.truth_select.value
        if truth != "any":
            with np.errstate(invalid="ignore"):
                right = right_redshifts(self.z, self.z_true, TRUTH_TOL)
            keep &= right if truth == "right" else (~right & np.isfinite(self.z_true))
        if self.class_name is not None and self.class_choice.value:
            codes = [int(self._class_values[self.class_labels.index(c)]) for c in self.class_choice.value]
            keep &= np.isin(self.class_codes, codes)
        try:
            for column, low, high in ((self.score_select.value, self.score_min, self.score_max),
                                      ("z", self.z_min, self.z_max)):
                lo, hi = _float(low.value), _float(high.value)
                if column and (lo is not None or hi is not None):
                    values = self._column(column)
                    with np.errstate(invalid="ignore"):
                        keep &= np.isfinite(values)
                        keep &= values >= lo if lo is not None else True
                        keep &= values <= hi if hi is not None else True
        except ValueError as exc:
            self.message.text = f"filter: {escape(str(exc))}"
            return
        current = self.row
        self.rows = np.flatnonzero(keep)
        where = np.flatnonzero(self.rows == current) if current is not None else np.zeros(0, int)
        self.message.text = ""
        self.show(int(where[0]) if where.size else 0)

    def save(self) -> bool:
        """Save the flag, override and comment of the page for the row shown into the store's vi group.

        Returns
        -------
        bool
            Whether it was saved (not without a row, with a redshift that is not a number, or with no flag).
        """
        row = self.row
        if row is None:
            return False
        flag = self.selected_flag()
        if flag is None:
            self.message.text = "choose a quality flag (0-4, 6) before saving"
            return False
        try:
            z = _float(self.z_input.value)
        except ValueError:
            self.message.text = f"z override: {escape(self.z_input.value)} is not a number"
            return False
        try:
            record = zvi.save_inspection(self.store, group=self.group, results=self.results, row=row, flag=flag,
                                         z=z, comment=self.comment_input.value, who=self.who,
                                         z_results=float(self.z[row]))
        except (StoreError, OSError) as exc:  # a read-only store, another inspector's save that hangs
            self.message.text = f"not saved: {escape(str(exc))}"
            return False
        self.flags[row] = flag
        self.message.text = ""
        self._show_inspection(record)
        return True

    # ------------------------------------------------------------------------------------------- drawing

    def show(self, position: int | None = None) -> None:
        """Draw the row at ``position`` of :attr:`rows` (clipped to the rows; default: the current one)."""
        if position is not None:
            self.position = int(min(max(position, 0), max(self.rows.size - 1, 0)))
        row = self.row
        if row is None:
            self._clear("no spectrum passes the filters")
            return
        flux, ivar = self._pixels(row)
        width = 1 if self.smooth_select.value == "none" else int(self.smooth_select.value)
        flux, ivar = _smooth(flux, ivar, width)
        with np.errstate(divide="ignore", invalid="ignore"):
            sigma = np.where(ivar > 0, 1.0 / np.sqrt(ivar), np.nan)
        shown = np.where(ivar > 0, flux, np.nan)
        self.spectrum_source.data = {"wavelength": self.wavelength, "flux": shown, "lower": shown - sigma,
                                     "upper": shown + sigma}
        fit = self.fit(row)
        nan = np.full(self.wavelength.size, np.nan)
        self.model_source.data = {"wavelength": self.wavelength,
                                  **{name: fit.models.get(name, nan) for name in self.model_renderers}}
        for name, renderer in self.model_renderers.items():
            renderer.visible = name in fit.models
        window = self._window(row)
        inside = (self.wavelength >= window[0]) & (self.wavelength <= window[1])
        finite = shown[inside & np.isfinite(shown)]
        if finite.size:  # robust limits: a cosmic ray or a sky line must not squash the spectrum
            lo, hi = np.percentile(finite, [0.5, 99.5])
            model = fit.models.get("model")
            if model is not None and np.isfinite(model[inside]).any():
                lo, hi = min(lo, float(np.nanmin(model[inside]))), max(hi, float(np.nanmax(model[inside])))
            pad = 0.08 * (hi - lo if hi > lo else 1.0)
            self.spectrum_figure.y_range.start, self.spectrum_figure.y_range.end = lo - pad, hi + 2 * pad
        if self.view_select.value != _VIEWS[0]:
            self.spectrum_figure.x_range.start, self.spectrum_figure.x_range.end = window
        self._show_inspection(zvi.inspection_of(self.store, self.results, row), reset=True)
        self._draw_curve(row, fit)
        self._draw_lines()
        self._draw_info(row, fit)

    def _window(self, row: int) -> tuple[float, float]:
        """The wavelengths the view shows for a row: the grid, or Ly-alpha at its z +- 100 Angstrom."""
        full = (float(self.wavelength[0]), float(self.wavelength[-1]))
        z = float(self.z[row])
        if self.view_select.value == _VIEWS[0] or not math.isfinite(z):
            return full
        centre = _LYA * (1 + z)
        return max(full[0], centre - 100.0), min(full[1], centre + 100.0)

    def _view_changed(self) -> None:
        if self.view_select.value == _VIEWS[0]:
            self.spectrum_figure.x_range.start, self.spectrum_figure.x_range.end = (float(self.wavelength[0]),
                                                                                    float(self.wavelength[-1]))
        self.show()

    def _clear(self, text: str) -> None:
        for source in (self.spectrum_source, self.model_source, self.curve_source, self.candidate_source,
                       self.line_source):
            source.data = {key: [] for key in source.data}
        for span in (self.z_span, self.truth_span, self.override_span):
            span.visible = False
        self.info.text = f"<span data-row='none'>{escape(text)}</span>"
        self.vi_status.text = ""

    def _draw_curve(self, row: int, fit: _Fit) -> None:
        if fit.curve is not None and fit.redshift is not None:
            self.curve_source.data = {"z": fit.redshift, "chi2": fit.curve}
        else:
            self.curve_source.data = {"z": [], "chi2": []}
        candidates = self.candidates(row)
        if fit.curve is not None and fit.redshift is not None and np.isfinite(fit.curve).any():
            ok = np.isfinite(fit.curve)
            y = np.interp(candidates, fit.redshift[ok], fit.curve[ok])
        else:
            y = np.zeros(candidates.size)
        self.candidate_source.data = {"z": candidates, "chi2": y, "label": [str(i) for i in range(candidates.size)]}
        z = float(self.z[row])
        self.z_span.visible = math.isfinite(z)
        self.z_span.location = z if math.isfinite(z) else 0.0
        truth = float(self.z_true[row])
        self.truth_span.visible = math.isfinite(truth)
        self.truth_span.location = truth if math.isfinite(truth) else 0.0
        self.chi2_figure.yaxis.axis_label = ("Δχ² (LAE component)" if fit.quantity == "dchi2" else "χ²")

    def _shown_z(self) -> tuple[float, bool]:
        """The redshift the lines are drawn at: the override box's when it holds a number, else the fit's."""
        try:
            typed = _float(self.z_input.value)
        except ValueError:
            typed = None
        row = self.row
        if typed is not None:
            return typed, True
        return (float(self.z[row]) if row is not None else math.nan), False

    def _draw_lines(self) -> None:
        """Lines (:data:`LINES`) at the override box's redshift when it holds one (purple), else at the fit's."""
        row = self.row
        z, override = self._shown_z()
        self.override_span.visible = override and row is not None
        self.override_span.location = z if override else 0.0
        if row is None or not math.isfinite(z):
            self.line_source.data = {key: [] for key in self.line_source.data}
            self.spectrum_figure.title.text = "" if row is None else f"targetid {int(self.targetid[row])} · row {row}"
            return
        y0, y1 = self.spectrum_figure.y_range.start, self.spectrum_figure.y_range.end
        wmin, wmax = self.wavelength[0], self.wavelength[-1]
        x, labels, colors = [], [], []
        for label, rest, kind in LINES:
            observed = rest * (1 + z)
            if wmin <= observed <= wmax:
                x.append(observed)
                labels.append(label)
                colors.append(("#7b3294" if override else "#1f77b4") if kind == "emission" else "#8c564b")
        n = len(x)
        self.line_source.data = {"x": x, "y0": [y0] * n, "y1": [y1] * n, "ytext": [y1] * n, "label": labels,
                                 "color": colors}
        self.spectrum_figure.title.text = (f"targetid {int(self.targetid[row])} · row {row} · lines at "
                                           f"{'the override ' if override else ''}z = {z:.5f}")

    def _override_typed(self) -> None:
        try:
            _float(self.z_input.value)
        except ValueError:
            self.message.text = f"z override: {escape(self.z_input.value)} is not a number"
        self._draw_lines()

    def _draw_info(self, row: int, fit: _Fit) -> None:
        parts = [f"<b>row {row}</b> ({self.position + 1} of {self.rows.size} shown)",
                 f"targetid {int(self.targetid[row])}", f"<b>z = {_fmt(float(self.z[row]))}</b>",
                 f"ZWARN {int(self.zwarn[row])}{self._zwarn_names(int(self.zwarn[row]))}"]
        for name, label, spec in (("zerr", "zerr", ".2g"), ("deltachi2", "Δχ²", ".1f"),
                                  ("confidence", "confidence", ".3f"), ("lae_abs_dchi2_cal", "|Δχ²|cal", ".1f")):
            if name in self._results:
                parts.append(f"{label} {_fmt(float(self._column(name)[row]), spec)}")
        if np.isfinite(self.z_true[row]):
            parts.append(f"z_true {_fmt(float(self.z_true[row]))}")
        if self.class_name is not None:
            code = int(self.class_codes[row])
            match = np.flatnonzero(self._class_values == code)
            parts.append(f"{self.class_name} {self.class_labels[int(match[0])] if match.size else code}")
        head = (f"<span data-row='{row}' data-position='{self.position}'>{' · '.join(parts)}</span>"
                f"<br><span style='color:#666;font-size:85%'>{escape(self.results)} ({escape(self.kernel)}) · "
                f"{escape(self.store)} · {escape(fit.note)}</span>")
        self.info.text = head

    def _zwarn_names(self, value: int) -> str:
        if not value:
            return ""
        attrs = self._results["zwarn"].attrs if "zwarn" in self._results else {}
        masks, meanings = attrs.get("flag_masks", []), str(attrs.get("flag_meanings", "")).split()
        names = [name for mask, name in zip(masks, meanings, strict=False) if value & int(mask)]
        return f" ({', '.join(names)})" if names else ""

    def _show_inspection(self, record: Mapping[str, Any] | None, reset: bool = False) -> None:
        """The saved inspection of the row in the widgets (``reset``: also empty them when there is none)."""
        if record is None:
            if reset:
                self.set_flag(None)
                self.z_input.value = ""
                self.comment_input.value = ""
            self.vi_status.text = "<i>not inspected yet</i>"
            return
        if reset:
            self.set_flag(int(record["flag"]))
            override = float(record["z_override"])
            self.z_input.value = f"{override:.5f}" if math.isfinite(override) else ""
            self.comment_input.value = str(record["comment"])
        name = zvi.VI_FLAGS.get(int(record["flag"]), "?")
        z_text = f"z override {_fmt(float(record['z_override']))}" if math.isfinite(float(record["z_override"])) \
            else f"accepts z {_fmt(float(record['z_results']))}"
        self.vi_status.text = (f"<span data-saved-flag='{int(record['flag'])}'>saved: flag {int(record['flag'])} "
                               f"({name}), {z_text}, by {escape(str(record['who']))} at "
                               f"{escape(str(record['when']))}</span>")


# ----------------------------------------------------------------------------------------------- server


def make_document(doc: Any, store: str | PathLike[str], **options: Any) -> Inspector:
    """Fill a Bokeh document with an :class:`Inspector` of ``store`` (``options``: its keyword arguments).

    Returns
    -------
    Inspector
        The page, whose methods are its callbacks.
    """
    inspector = Inspector(store, **options)
    doc.title = f"dzspec inspect · {Path(str(store)).name}"
    doc.add_root(inspector.layout)
    doc.js_on_event("document_ready", inspector.keyboard_callback())
    return inspector


def inspector_server(store: str | PathLike[str], *, group: str | None = None, results: str | None = None,
                     who: str | None = None, where: str | None = None, port: int = 5006,
                     address: str = "localhost", allow_websocket_origin: Sequence[str] | None = None) -> Any:
    """A Bokeh :class:`~bokeh.server.server.Server` (not yet started) serving the inspector at ``/``.

    The groups are resolved here, so that a wrong ``results`` fails before any page is served. ``port`` 0 takes
    a free port (``server.port`` tells which).
    """
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    group, results = resolve_inspection(store, group, results)
    if where:  # a bad expression fails here, not in every page
        from dzspec.model_spectra import select_rows

        select_rows(store, results, "all", where=where)
    options = {"group": group, "results": results, "who": who, "where": where}

    def page(doc: Any) -> None:  # one Inspector per browser page (session)
        make_document(doc, str(store), **options)

    application = Application(FunctionHandler(page))
    kwargs: dict[str, Any] = {"port": port, "address": address}
    if allow_websocket_origin:
        kwargs["allow_websocket_origin"] = list(allow_websocket_origin)
    return Server({"/": application}, **kwargs)


def serve_inspector(store: str | PathLike[str], *, group: str | None = None, results: str | None = None,
                    who: str | None = None, where: str | None = None, port: int = 5006,
                    address: str = "localhost", show: bool = True,
                    allow_websocket_origin: Sequence[str] | None = None,
                    announce: Callable[[str], None] | None = None) -> None:
    """Serve the inspector of ``store`` until Ctrl-C or SIGTERM (blocks).

    Parameters
    ----------
    store, group, results, who, where
        As :class:`Inspector`.
    port
        TCP port (0: a free one).
    address
        Address to listen on (default ``localhost``; through an ``ssh -L`` tunnel from a cluster login node).
    show
        Open the page in the default browser.
    allow_websocket_origin
        Further ``host[:port]`` the page may be opened from (for an address other than localhost).
    announce
        Called with the page's URL once the server listens (default: print it).
    """
    server = inspector_server(store, group=group, results=results, who=who, where=where, port=port,
                              address=address, allow_websocket_origin=allow_websocket_origin)
    server.start()
    url = f"http://{address}:{server.port}/"
    (announce or (lambda text: print(f"dzspec inspect: {text}", flush=True)))(url)
    if show:
        server.io_loop.add_callback(server.show, "/")
    server.run_until_shutdown()
