"""dzspec inspect: the inspector's callbacks in process, and the page in a real headless Chromium.

The store is small and made without a cluster: twelve spectra of a three-component analytic basis, scanned in
process by the zfind kernel with the parameters a run would store, so that the page's rescan is the real one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dzspec.engines.nmf.adapter import ZFIND
from dzspec.engines.nmf.train import NMFResult
from dzspec.errors import BadSpectrumWarning, StoreError
from dzspec.io import store as zstore
from dzspec.io import vi as zvi
from dzspec.io.bases import load_basis, save_basis
from dzspec.kernels.restframe import LogGrid
from dzspec.parallel.runner import config_sha256
from dzspec.schema import flag_attrs, make_spectra_dataset

WAVE = 4750.0 + 1.25 * np.arange(800)  # 4750-5749 A
GRID = LogGrid.spanning(4700.0 / 1.6, 5800.0, 1e-4)
LINES = ((3727.4, 2.0), (4862.7, 3.0), (5008.2, 4.0), (4102.9, 1.5), (3934.8, 2.5))
NSPEC = 12
CLASSES = ("galaxy", "star")


def _components(wave_rest: np.ndarray) -> np.ndarray:
    """Three non-negative rest-frame components (f_lambda): continuum, emission lines, a second continuum."""
    lines = sum(np.exp(-0.5 * ((wave_rest - c) / s) ** 2) for c, s in LINES)
    return np.vstack([np.ones_like(wave_rest), lines, (wave_rest / 4000.0) ** 2])


def make_inspection_store(directory: Path, seed: int = 0, store_chi2: bool = False) -> tuple[Path, str]:
    """A store of NSPEC spectra with ``results/<grid>/nmf_zfind`` written as ``dzspec zfind`` would (one block,
    scanned in process; with ``store_chi2`` the curves too, decimated by 2); row 3 has no data. Returns (store,
    results path)."""
    directory.mkdir(parents=True, exist_ok=True)
    rest = GRID.wavelength()
    basis_store = directory / "basis.zarr"
    save_basis(basis_store, "toy", NMFResult(_components(rest) * np.log(10) * rest, np.zeros((1, 3)),
                                             np.ones(GRID.size, bool)), GRID, training_sha256="analytic")
    rng = np.random.default_rng(seed)
    z_true = rng.uniform(0.05, 0.45, NSPEC)
    flux = np.vstack([np.array([1.0, 6.0, 0.5]) @ _components(WAVE / (1 + z)) / (1 + z) for z in z_true])
    sigma = 0.08 + 0.12 * ((WAVE - WAVE[0]) / (WAVE[-1] - WAVE[0])) ** 2  # noisier to the red, like a sky
    flux += rng.normal(0, 1, flux.shape) * sigma
    ivar = np.tile(1 / sigma**2, (NSPEC, 1))
    ivar[3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSpectrumWarning)
        ds = make_spectra_dataset(WAVE, flux, ivar, source_file="<test>", reader="test",
                                  coords={"targetid": 500 + np.arange(NSPEC), "z_true": z_true,
                                          "sim_class": (np.arange(NSPEC) % 4 == 1).astype(np.int8)})
    store = directory / "s.zarr"
    root = zstore.open_root(store, mode="a")
    group = zstore.create_spectra_group(root, ds, chunk_rows=8)
    zstore.resize_spectra_group(group, NSPEC)
    zstore.write_rows(group, ds, 0)
    group["sim_class"].attrs.update(flag_attrs(CLASSES))
    zstore.set_manifest(group, [{"sha256": "t", "path": "<test>", "reader": "test", "row_start": 0, "nrows": NSPEC,
                                 "status": "done"}])
    params = {**ZFIND.defaults, "z_max": 0.5, "dz": 0.0005, "basis_store": str(basis_store.resolve()),
              "basis_name": "toy", "basis_sha256": load_basis(basis_store, "toy").attrs["basis_sha256"], "rank": 3,
              "store_chi2": store_chi2, "chi2_decimate": 2 if store_chi2 else 1}
    spectra = group.path
    results = f"results/{spectra.removeprefix('spectra/')}/nmf_zfind"
    out = ZFIND.func(WAVE, group["flux"][:], group["ivar"][:], **params)
    attrs = {"kernel": ZFIND.name, "kernel_version": ZFIND.version, "params": params,
             "config_sha256": config_sha256(ZFIND, params), "input_group": spectra,
             "input_id": zstore.input_id(group)}
    target = zstore.create_results_group(root, results, zstore.BlockPlan(NSPEC, NSPEC), ZFIND.output_specs(params),
                                         attrs, group["targetid"][:])
    zstore.write_block(target, 0, out)
    zstore.mark_block_done(target, 0, (0, NSPEC))
    target.attrs["status"] = "complete"
    return store, results


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return make_inspection_store(tmp_path_factory.mktemp("inspector"))


@pytest.fixture
def store(built: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A fresh copy of the module's store (the tests save inspections into it)."""
    source, results = built
    shutil.copytree(source, tmp_path / "s.zarr")
    return tmp_path / "s.zarr", results


def _page(store: Path, **options):
    from bokeh.document import Document

    from dzspec.viz.inspector import make_document

    doc = Document()
    return make_document(doc, store, **options), doc


# ----------------------------------------------------------------------------------------------- in process


def test_resolve_inspection_defaults_to_the_engine_group_and_names_what_is_there(store):
    from dzspec.viz.inspector import resolve_inspection

    path, results = store
    spectra = results.replace("results/", "spectra/").rsplit("/", 1)[0]
    assert resolve_inspection(path) == (spectra, results)
    assert resolve_inspection(path, results="nmf_zfind") == (spectra, results)
    assert resolve_inspection(path, group=spectra.split("/")[1], results="nmf_zfind") == (spectra, results)
    with pytest.raises(StoreError, match="no results group 'madgics_lae'"):
        resolve_inspection(path, results="madgics_lae")
    # a second spectra group without results (exposures, say) leaves the default as it was
    from dzspec.testing import synthetic_dataset

    other = zstore.create_spectra_group(zstore.open_root(path, mode="r+"), synthetic_dataset(np.arange(1))).path
    assert resolve_inspection(path) == (spectra, results)
    with pytest.raises(StoreError, match="run dzspec zfind or dzspec lae first"):
        resolve_inspection(path, group=other)
    with pytest.raises(StoreError, match="was computed on"):
        resolve_inspection(path, group=other, results=results)


def test_the_page_draws_flux_sigma_model_lines_and_the_chi2_curve(store):
    from dzspec.viz.inspector import LINES

    path, results = store
    page, doc = _page(path, who="ada")
    assert doc.roots and doc.title.startswith("dzspec inspect")
    assert page.row == 0 and page.rows.tolist() == list(range(NSPEC))
    spectrum = page.spectrum_source.data
    group = zstore.open_root(path)[page.group]
    flux, ivar = group["flux"][0].astype(float), group["ivar"][0].astype(float)
    np.testing.assert_allclose(spectrum["flux"], flux)
    np.testing.assert_allclose((spectrum["upper"] - spectrum["lower"]) / 2, 1 / np.sqrt(ivar), rtol=1e-6)
    # the model is the fit: it follows the data to within the noise
    model = page.model_source.data["model"]
    assert page.model_renderers["model"].visible and np.nanmedian(np.abs(model - flux)) < 0.15
    assert set(page.model_renderers) == {"model", "model_nuisance"}
    # chi2(z) recomputed with the run's basis: its minimum is the stored z, the candidates sit on the curve
    stored = zstore.open_results(path, results).compute()
    curve = page.curve_source.data
    assert curve["z"][np.argmin(curve["chi2"])] == pytest.approx(stored.z.values[0], abs=1e-9)
    assert page.candidate_source.data["z"][0] == pytest.approx(stored.candidate_z.values[0, 0])
    # the page's z is the refined one (ZERR's, the export's Z), which lies within a trial step of the curve's minimum
    assert page.z_span.visible and page.z_span.location == pytest.approx(stored.z_refined.values[0])
    assert abs(stored.z_refined.values[0] - stored.z.values[0]) < 0.0005
    assert page.truth_span.visible
    # lines at z: those on the grid
    lines = page.line_source.data
    z = stored.z_refined.values[0]
    expected = [rest * (1 + z) for _, rest, _ in LINES if WAVE[0] <= rest * (1 + z) <= WAVE[-1]]
    np.testing.assert_allclose(lines["x"], expected)
    assert lines["label"][:3] == ["[OII]", "", "K"]  # [O II] 3727 at z ~ 0.3, the doublet labelled once
    assert "row 0" in page.info.text and "targetid 500" in page.info.text


def test_navigation_by_buttons_and_keys_stays_within_the_rows(store):
    path, _ = store
    page, _ = _page(path)
    page.previous()
    assert page.row == 0
    for key, row in (("j", 1), ("ArrowRight", 2), ("j", 3), ("k", 2), ("ArrowLeft", 1)):
        page.key(key)
        assert page.row == row and f"data-row='{row}'" in page.info.text
    page.go_to_row(NSPEC - 1)
    page.next()
    assert page.row == NSPEC - 1
    page.goto_input.value = "5"
    assert page.row == 5
    page.key_channel.text = "j 17"  # what the page's keydown listener writes
    assert page.row == 6
    # the empty spectrum (row 3) shows without data or model, and says why
    page.go_to_row(3)
    assert np.isnan(page.spectrum_source.data["flux"]).all() and "NODATA" in page.info.text


def test_filters_choose_the_rows(store):
    path, results = store
    page, _ = _page(path)
    stored = zstore.open_results(path, results).compute()
    page.zwarn_select.value = "ZWARN != 0"
    assert page.rows.tolist() == np.flatnonzero(stored.zwarn.values != 0).tolist() and 3 in page.rows
    page.zwarn_select.value = "ZWARN == 0"
    assert page.rows.tolist() == np.flatnonzero(stored.zwarn.values == 0).tolist()
    page.zwarn_select.value = "any"
    page.class_choice.value = ["star"]
    assert page.rows.tolist() == [1, 5, 9]
    page.class_choice.value = []
    page.z_min.value, page.z_max.value = "0.2", "0.4"
    z = stored.z_refined.values
    assert page.rows.tolist() == np.flatnonzero((z >= 0.2) & (z <= 0.4)).tolist()
    page.z_min.value = page.z_max.value = ""
    page.score_select.value = "deltachi2"
    threshold = float(np.nanmedian(stored.deltachi2.values))
    page.score_min.value = str(threshold)
    assert page.rows.tolist() == np.flatnonzero(stored.deltachi2.values >= threshold).tolist()
    page.score_min.value = "x"
    assert "filter" in page.message.text
    page.score_min.value = ""
    page.truth_select.value = "wrong"
    z_true = zstore.open_spectra(path).z_true.values
    right = np.abs(z - z_true) < 0.005 * (1 + z_true)
    assert page.rows.tolist() == np.flatnonzero(~right).tolist()  # row 3: no z, so not right
    page.truth_select.value = "right"
    assert page.rows.tolist() == np.flatnonzero(right).tolist()
    page.truth_select.value = "any"
    page.inspected_select.value = "inspected"
    assert page.rows.size == 0 and "no spectrum passes" in page.info.text
    # --where restricts the rows before the filters
    where, _ = _page(path, where="z > 0.3")
    assert where.rows.tolist() == np.flatnonzero(z > 0.3).tolist()


def test_inspections_are_saved_in_the_store_and_shown_again_after_a_restart(store, monkeypatch):
    path, results = store
    page, _ = _page(path, who="ada")
    page.go_to_row(4)
    candidates = page.candidates(4)
    page.pick_redshift(float(candidates[1]) + 0.002)  # a click beside the second candidate on the chi2 plot
    assert page.z_input.value == f"{candidates[1]:.5f}"
    assert page.override_span.visible and page.override_span.location == pytest.approx(candidates[1], abs=1e-5)
    page.next_candidate()
    assert page.z_input.value == f"{candidates[2]:.5f}"
    page.z_input.value = "0.12345"
    assert not page.save()  # no flag chosen yet
    assert "choose a quality flag" in page.message.text
    page.set_flag(3)
    page.comment_input.value = "two lines, [O III] doublet ✓"
    assert page.save()
    assert "data-saved-flag='3'" in page.vi_status.text and "ada" in page.vi_status.text
    page.go_to_row(6)
    page.key("2")  # MARZ: the number saves with that flag and goes on
    assert page.row == 7
    page.z_input.value = "not a number"
    page.set_flag(1)
    assert not page.save() and "not a number" in page.message.text

    table = zvi.load_inspections(path)
    assert table["row"].tolist() == [4, 6] and table["flag"].tolist() == [3, 2]
    assert table["z_override"][0] == 0.12345 and np.isnan(table["z_override"][1])
    stored_z = zstore.open_results(path, results).z_refined.values  # the fit's z as the export gives it
    assert table["z_vi"][1] == stored_z[6] and table["z_results"][0] == stored_z[4]
    assert table["comment"][0] == "two lines, [O III] doublet ✓" and set(table["who"]) == {"ada"}
    assert table["targetid"].tolist() == [504, 506] and set(table["results"]) == {results}

    def locked(*args, **kwargs):
        raise StoreError("is being written by another run")

    monkeypatch.setattr(zvi, "save_inspection", locked)
    page.z_input.value = ""
    assert not page.save() and "not saved" in page.message.text
    monkeypatch.undo()

    restarted, _ = _page(path, who="bob")
    assert restarted.row == 0 and restarted.selected_flag() is None and restarted.z_input.value == ""
    restarted.go_to_row(4)
    assert restarted.selected_flag() == 3 and restarted.z_input.value == "0.12345"
    assert restarted.comment_input.value == "two lines, [O III] doublet ✓" and "by ada" in restarted.vi_status.text
    restarted.next()
    assert restarted.selected_flag() is None and "not inspected" in restarted.vi_status.text
    restarted.inspected_select.value = "inspected"
    assert restarted.rows.tolist() == [4, 6]
    restarted.inspected_select.value = "not inspected"
    assert 4 not in restarted.rows and restarted.rows.size == NSPEC - 2


def test_the_stored_curve_is_shown_and_the_model_needs_no_rescan(tmp_path, monkeypatch):
    path, results = make_inspection_store(tmp_path, store_chi2=True)

    rescans = []

    def no_rescan(*args, **kwargs):  # the page catches what a rescan raises: count the calls instead
        rescans.append(args)
        raise AssertionError("a stored curve needs no rescan")

    monkeypatch.setattr("dzspec.model_spectra.rescan", no_rescan)
    page, _ = _page(path)
    assert rescans == []
    stored = zstore.open_results(path, results)
    np.testing.assert_array_equal(page.curve_source.data["chi2"], stored.zchi2.values[0])
    np.testing.assert_array_equal(page.curve_source.data["z"], stored.zchi2.redshift.values)
    assert "stored chi2 curve (decimated by 2)" in page.info.text
    assert page.model_renderers["model"].visible


def test_a_missing_model_leaves_the_data_and_says_why(store, tmp_path):
    path, results = store
    root = zstore.open_root(path, mode="r+")
    params = dict(root[results].attrs["params"])
    root[results].attrs["params"] = {**params, "basis_store": str(tmp_path / "gone.zarr")}
    page, _ = _page(path)
    assert not page.model_renderers["model"].visible
    assert "no model" in page.info.text and np.isfinite(page.spectrum_source.data["flux"]).all()
    assert len(page.curve_source.data["z"]) == 0


def test_lae_results_show_the_sky_and_lae_components_and_the_delta_chi2(store, monkeypatch):
    from dzspec.results_schema import output_specs

    path, _ = store
    root = zstore.open_root(path, mode="r+")
    spectra = zstore.spectra_groups(root)[0]
    names = ["z", "zerr", "zwarn", "deltachi2", "candidate_z", "lae_abs_dchi2_cal"]
    lae = zstore.create_results_group(root, f"results/{spectra.removeprefix('spectra/')}/madgics_lae",
                                      zstore.BlockPlan(NSPEC, NSPEC),
                                      output_specs("madgics_lae", names, {"candidate": 3}),
                                      {"kernel": "madgics_lae", "input_group": spectra}, root[spectra]["targetid"][:])
    z = np.linspace(3.0, 3.6, NSPEC)
    zstore.write_block(lae, 0, {"z": z, "zerr": np.full(NSPEC, 1e-4), "zwarn": np.zeros(NSPEC, np.uint32),
                                "deltachi2": np.full(NSPEC, 40.0), "lae_abs_dchi2_cal": np.full(NSPEC, 60.0),
                                "candidate_z": np.stack([z, z + 0.2, z - 0.3], axis=1)})
    trial = np.linspace(2.0, 4.0, 201)

    def fake_rescan(store, results, rows, *, group=None):
        row = int(np.asarray(rows)[0])
        sky = np.full((1, WAVE.size), 0.1)
        line = np.exp(-0.5 * ((WAVE - 1215.67 * (1 + z[row])) / 3.0) ** 2)[None]
        return xr.Dataset(
            {"model": (("spectrum", "wavelength"), sky + line), "model_sky": (("spectrum", "wavelength"), sky),
             "model_lae": (("spectrum", "wavelength"), line),
             "zchi2": (("spectrum", "redshift"), -60 * np.exp(-0.5 * ((trial - z[row]) / 0.01) ** 2)[None],
                       {"quantity": "dchi2"})},
            coords={"redshift": trial, "wavelength": WAVE, "row": ("spectrum", [row])})

    monkeypatch.setattr("dzspec.model_spectra.rescan", fake_rescan)
    page, _ = _page(path, results="madgics_lae")
    assert page.kernel == "madgics_lae" and set(page.model_renderers) == {"model", "model_sky", "model_lae"}
    assert all(renderer.visible for renderer in page.model_renderers.values())
    assert page.chi2_figure.yaxis[0].axis_label.startswith("Δχ²")
    assert page.curve_source.data["z"][np.argmin(page.curve_source.data["chi2"])] == pytest.approx(z[0], abs=0.01)
    assert page.line_source.data["label"][0] == "Ly\N{GREEK SMALL LETTER ALPHA}"
    assert "|Δχ²|cal 60.0" in page.info.text
    # the view follows Lya at each row's z; "full" gives back the whole grid
    lya = 1215.67 * (1 + z)
    assert (page.spectrum_figure.x_range.start, page.spectrum_figure.x_range.end) == pytest.approx(
        (lya[0] - 100, lya[0] + 100))
    page.next()
    assert page.spectrum_figure.x_range.start == pytest.approx(lya[1] - 100)
    page.view_select.value = "full"
    assert (page.spectrum_figure.x_range.start, page.spectrum_figure.x_range.end) == (WAVE[0], WAVE[-1])


def test_cli_inspect_refuses_unknown_results_before_serving(store, capsys):
    from dzspec.cli import build_parser, main

    path, _ = store
    assert main(["inspect", str(path), "--results", "nope", "--no-show", "--port", "0"]) == 2
    assert "no results group 'nope'" in capsys.readouterr().err
    args = build_parser().parse_args(["inspect", str(path)])
    assert (args.port, args.show, args.address, args.who, args.results) == (5006, True, "localhost", None, None)


# ----------------------------------------------------------------------------------------------- in a browser

#: Finds elements by CSS selector through Bokeh's shadow roots (every widget renders in its own).
_FIND = """
const all = (root) => {
  let found = [];
  for (const element of root.querySelectorAll("*")) {
    found.push(element);
    if (element.shadowRoot) found = found.concat(all(element.shadowRoot));
  }
  return found;
};
return all(document).filter((element) => element.matches(arguments[0]));
"""


def _browser() -> tuple[str, str]:
    """Chromium and chromedriver, or skip (fail under CI=true: the browser test must run there)."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    chromium = os.environ.get("DZSPEC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("DZSPEC_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing += [f"{name} (Debian: apt-get install chromium chromium-driver)"
                for name, path in (("chromium", chromium), ("chromedriver", driver)) if not Path(path).is_file()]
    if missing:
        reason = "the inspector's browser test needs " + ", ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI must run it")
        pytest.skip(reason)
    return chromium, driver


def _serve(store: Path, who: str) -> tuple[subprocess.Popen, str]:
    """``dzspec inspect`` in a subprocess on a free port: the process and the page's URL."""
    process = subprocess.Popen([sys.executable, "-m", "dzspec.cli", "inspect", str(store), "--port", "0",
                                "--no-show", "--who", who], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = re.search(r"(http://\S+/)", line)
        if match:
            return process, match.group(1)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"dzspec inspect did not start: {process.stdout.read()}")


def test_the_page_in_a_real_browser_steps_with_keys_and_saves_an_inspection(store, tmp_path):
    chromium, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    path, results = store
    process, url = _serve(path, "selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)

    def find(selector: str) -> list:
        return browser.execute_script(_FIND, selector)

    def shown_row() -> int | None:
        # read in the page: the info Div re-renders on every row, so a held element goes stale
        value = browser.execute_script(_FIND.replace("return all(document)", "const found = all(document)")
                                       + "return found.length ? found[0].getAttribute('data-row') : null;",
                                       "[data-row]")
        return int(value) if value and value.isdigit() else None

    def press(key: str, then_row: int) -> None:
        ActionChains(browser).send_keys(key).perform()
        wait.until(lambda _: shown_row() == then_row, f"key {key!r} did not bring row {then_row}")

    def button(text: str):
        return next(b for b in find("button") if b.text.strip() == text)

    try:
        browser.get(url)
        wait.until(lambda _: shown_row() == 0, "the page did not show its first spectrum")
        wait.until(lambda _: browser.execute_script("return !!window.__dzspec_keys"), "no key listener on the page")
        assert len(find(".bk-Figure")) == 2  # the spectrum and the chi2 plot
        # three spectra forward with the keyboard, one back, one forward with the button
        press("j", 1)
        press(Keys.ARROW_RIGHT, 2)
        press("j", 3)
        press("k", 2)
        button("next (j) ▶").click()
        wait.until(lambda _: shown_row() == 3)
        press("j", 4)
        # a click on the chi2 plot puts a redshift in the override box
        z_box = find("input[placeholder='z override']")[0]
        chi2_plot = find(".bk-Figure")[1]
        ActionChains(browser).move_to_element_with_offset(chi2_plot, 0, 0).click().perform()
        wait.until(lambda _: z_box.get_attribute("value"), "a click on the chi2 plot gave no redshift")
        assert 0.0 <= float(z_box.get_attribute("value")) <= 0.5
        # keys typed into a box stay there; flag, override and comment, then save
        z_box.clear()
        z_box.send_keys("0.4321" + Keys.ENTER)
        comment = find("input[placeholder='comment']")[0]
        comment.send_keys("jk typed here" + Keys.ENTER)
        assert shown_row() == 4
        button("3 probable").click()
        button("save inspection (s)").click()
        wait.until(lambda _: find("[data-saved-flag='3']"), "the page did not confirm the save")
        # MARZ: a number key saves with that flag and goes on
        press("j", 5)
        press("4", 6)
        press("k", 5)
        wait.until(lambda _: find("[data-saved-flag='4']"))
        press("k", 4)
        wait.until(lambda _: find("[data-saved-flag='3']"))
        screenshot = tmp_path / "inspector.png"
        assert browser.save_screenshot(str(screenshot))
    finally:
        browser.quit()
        process.terminate()
        process.wait(timeout=30)
    if os.environ.get("DZSPEC_SCREENSHOT"):  # for a look by eye, e.g. /tmp/inspector_screenshot.png
        shutil.copyfile(screenshot, os.environ["DZSPEC_SCREENSHOT"])

    table = zvi.load_inspections(path)
    assert table["row"].tolist() == [4, 5] and table["flag"].tolist() == [3, 4]
    assert table["z_override"][0] == 0.4321 and np.isnan(table["z_override"][1])
    assert table["comment"].tolist() == ["jk typed here", ""]
    assert table["who"].tolist() == ["selenium", "selenium"] and set(table["results"]) == {results}
    assert screenshot.stat().st_size > 10_000


def test_a_missing_browser_skips_here_and_fails_under_ci(monkeypatch):
    monkeypatch.setenv("DZSPEC_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        _browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run it"):
        _browser()
