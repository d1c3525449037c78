"""benchmarks/qc.py on its smallest case: the H2/STO-3G RHF energy by NWChem (a serial app, MPI
with 1 and 2 ranks under Debian's Open MPI) and by PySCF (a Python function), through the
futures API and through ``balsam-dask submit --file`` + ``serve``, each checked against the same
calculation run directly (qc.main fails otherwise) and against the textbook value."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from balsam_dask.store import Store
from tests.conftest import require_or_skip

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import qc
import qc_runs

#: RHF/STO-3G of H2 at 1.4 bohr (Szabo and Ostlund, Modern Quantum Chemistry, ch. 3): -1.1167 Eh.
H2_STO3G = -1.1167


def need_codes() -> None:
    if shutil.which("nwchem") is None or shutil.which("/usr/bin/mpirun") is None:
        require_or_skip("NWChem with Open MPI (scripts/install_nwchem.sh)")
    try:
        import pyscf  # noqa: F401
    except ImportError:
        require_or_skip("PySCF (pip install -e '.[qc]')")


@pytest.mark.slow
@pytest.mark.mpi
def test_h2_energies_through_futures_and_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_codes()
    figures = qc.main(["--molecules", "h2", "--methods", "scf", "--basis", "sto-3g", "--overhead-tasks", "0",
                       "--repeat", "1", "--workdir", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == figures
    assert figures["mixed_tasks"] == 4
    assert figures["max_dev_balsam_vs_direct_eh"] <= 1e-8
    assert figures["max_dev_nwchem_vs_pyscf_scf_eh"] <= 1e-8
    for unit in ("futures", "serve"):
        assert 0 < figures[f"{unit}_utilization"] <= 1, unit
        assert len(list((tmp_path / f"{unit}_0-report-mixed").glob("*.png"))) == 5  # the run's report, plotted
        url = f"sqlite:///{tmp_path}/{unit}_0.db"
        energies = qc_runs.energies(url, "mixed")
        assert sorted(energies) == [f"h2-scf-{v}.0" for v in ("mpi1", "mpi2", "pyscf", "serial")]
        assert all(abs(e - H2_STO3G) < 1e-4 for e in energies.values()), energies
        with Store(url) as store:
            tasks = store.tasks(limit=None)
        assert sorted(t.kind for t in tasks) == ["app", "mpi", "mpi", "python"]
        if unit == "serve":  # database tasks: the apps and the function of the task file
            assert sorted(str(t.app or t.function) for t in tasks) == sorted(
                ["nwchem", "nwchem-mpi", "nwchem-mpi", qc_runs.FUNCTION]
            )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--molecules", "xe"],
            r"argument --molecules: 'xe': give molecules from h2,lih,.* \(or how many\), e\.g\. h2",
        ),
        (["--molecules", "13"], r"argument --molecules: '13': give molecules from"),
        (["--methods", "mp2"], r"argument --methods: 'mp2': give methods from scf,dft, e\.g\. scf"),
        (["--mpi-env", "1X=2"], r"argument --mpi-env: '1X=2': give NAME=VALUE pairs"),
        (["--copies", "0"], r"argument --copies: '0' is not a whole number >= 1"),
        (["--codes", "pyscf", "--site", "/nonexistent"], r"--site /nonexistent: .*balsam-dask site init"),
        (
            ["--nwchem", "/bin/true", "--launcher", "detect"],
            r"--launcher detect leaves serve's 1-rank NWChem tasks "
            r"without a launcher .* e\.g\. --launcher openmpi:/usr/bin/mpirun",
        ),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    if "--launcher" in argv:
        need_codes()  # checked after the codes are found
    with pytest.raises(SystemExit) as e:
        qc.main(argv)
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)
