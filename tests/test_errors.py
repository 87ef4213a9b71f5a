import pickle

import pytest

from dzspec.errors import InputError, UnknownFormatError


@pytest.mark.parametrize("cls", [InputError, UnknownFormatError])
def test_input_errors_survive_pickling_from_workers(cls):
    error = cls("/data/coadd.fits", "wavelengths are not increasing", row=7)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.path, copy.problem, copy.row) == (error.path, error.problem, 7)
    assert str(copy) == "/data/coadd.fits: row 7: wavelengths are not increasing"
