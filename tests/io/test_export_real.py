"""Acceptance of #16: real DESI coadds and real MUSE spectra go ingest -> zfind / lae (shipped models) -> export, and
the FITS opens in astropy with Redrock's columns, one row per input spectrum."""

import numpy as np
import pytest
from astropy.table import Table

from dzspec.io import store as zstore
from dzspec.io.export import REDROCK_COLUMNS, write_export
from dzspec.models import default_basis_path, default_model_for_store, default_prior_path
from dzspec.parallel.ingest import ingest
from dzspec.parallel.lae import run_lae
from dzspec.parallel.zfind import run_zfind

pytestmark = pytest.mark.cluster

FILES = ("desi_fastspecfit/coadd-4-80613-thru20210324.fits", "desi_fastspecfit/coadd-special-dark-27247.fits",
         "muse_udf_format/DR2_001032.fits", "muse_udf_format/mosaic_01102.fits")


def test_real_spectra_from_files_to_a_redrock_table(shared_data, client, tmp_path):
    store = tmp_path / "real.zarr"
    report = ingest([shared_data / name for name in FILES], store, client, progress=False)
    assert report.ok, report.summary()
    groups = zstore.spectra_groups(zstore.open_root(store))
    for group in groups:
        basis = default_model_for_store("basis", store, group)
        run_zfind(store, default_basis_path(basis.name), client, group=group, progress=False)
    desi = next(g for g in groups if g.startswith("spectra/desi"))
    run_lae(store, default_prior_path("desi_lae"), client, group=desi, progress=False)
    out = write_export(store, tmp_path / "real.fits")
    table = Table.read(out, hdu="REDSHIFTS", mask_invalid=False)
    fibermap = Table.read(out, hdu="FIBERMAP", mask_invalid=False)
    assert len(table) == len(fibermap) == sum(zstore.open_spectra(store, g).sizes["spectrum"] for g in groups) == 4
    assert table.colnames[: len(REDROCK_COLUMNS)] == list(REDROCK_COLUMNS)
    assert (table["RUN_STATUS"] == "ok").all() and np.isfinite(table["Z"]).all() and np.isfinite(table["ZERR"]).all()
    assert set(table["SPECTYPE"]) == {"GALAXY"} and {"GROUP", "LAE_Z", "LAE_ZWARN", "CONFIDENCE"} <= set(table.colnames)
    by_file = dict(zip(fibermap["SOURCE_FILE"], table, strict=True))
    # the DESI galaxy (Redrock: z = 0.3687) and the MUSE [O II] emitter of the mosaic (z = 0.620), trusted
    galaxy, mosaic = by_file["coadd-4-80613-thru20210324.fits"], by_file["mosaic_01102.fits"]
    assert abs(galaxy["Z"] - 0.3687) < 0.001 and galaxy["ZWARN"] == 0 and galaxy["ZERR"] < 1e-4
    assert abs(mosaic["Z"] - 0.620) < 0.002 and mosaic["ZWARN"] == 0
    # LAE columns exist only for the DESI rows the LAE scan ran on
    assert (table["LAE_RUN_STATUS"][table["GROUP"] != desi.removeprefix("spectra/")] == "not_run").all()
