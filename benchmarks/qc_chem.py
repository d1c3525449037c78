"""The chemistry of benchmarks/qc.py: small closed-shell molecules, NWChem inputs and outputs,
and the PySCF function that computes the same energies (node-workers import this module).

Geometries are given in angstrom and handed to both programs in bohr, converted here with
one constant: each program's own angstrom-to-bohr factor differs in the 9th digit, which moves
the energies by ~1e-8 Eh (H2O/STO-3G: 9.4e-9). Basis functions are spherical in both (NWChem's
default is cartesian, PySCF's spherical): for s and p shells (STO-3G, 6-31G) the two sets are
the same, but a d shell has 6 cartesian functions and 5 spherical ones (H2O/6-31G*: 1.4 mEh
apart). DFT is PBE on fine grids (NWChem ``grid xfine``, PySCF ``grids.level`` 5).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: Angstrom per bohr (CODATA 2010), for both programs.
BOHR = 0.52917721092
METHODS = ("scf", "dft")
#: How each calculation runs: NWChem without a launcher, under MPI with 1 and 2 ranks; PySCF.
VARIANTS = ("serial", "mpi1", "mpi2", "pyscf")
NWCHEM_VARIANTS = ("serial", "mpi1", "mpi2")
RANKS = {"serial": 1, "mpi1": 1, "mpi2": 2, "pyscf": 1}

Atom = tuple[str, float, float, float]
MOLECULES: dict[str, tuple[Atom, ...]] = {
    "h2": (("H", 0, 0, 0), ("H", 0, 0, 0.7414)),
    "lih": (("Li", 0, 0, 0), ("H", 0, 0, 1.5957)),
    "h2o": (("O", 0, 0, 0.1173), ("H", 0, 0.7572, -0.4692), ("H", 0, -0.7572, -0.4692)),
    "nh3": (("N", 0, 0, 0), ("H", 0.93753, 0, -0.381028), ("H", -0.468765, 0.811924, -0.381028),
            ("H", -0.468765, -0.811924, -0.381028)),
    "ch4": (("C", 0, 0, 0), ("H", 0.62758, 0.62758, 0.62758), ("H", -0.62758, -0.62758, 0.62758),
            ("H", -0.62758, 0.62758, -0.62758), ("H", 0.62758, -0.62758, -0.62758)),
    "hf": (("F", 0, 0, 0), ("H", 0, 0, 0.9168)),
    "n2": (("N", 0, 0, 0), ("N", 0, 0, 1.0977)),
    "co": (("C", 0, 0, 0), ("O", 0, 0, 1.1283)),
    "hcn": (("H", 0, 0, -1.0655), ("C", 0, 0, 0), ("N", 0, 0, 1.1532)),
    "c2h2": (("H", 0, 0, -1.6645), ("C", 0, 0, -0.6015), ("C", 0, 0, 0.6015), ("H", 0, 0, 1.6645)),
    "h2co": (("C", 0, 0, 0), ("O", 0, 0, 1.205), ("H", 0.942695, 0, -0.587918), ("H", -0.942695, 0, -0.587918)),
    "c2h4": (("C", 0.6695, 0, 0), ("C", -0.6695, 0, 0), ("H", 1.232077, 0.928926, 0), ("H", 1.232077, -0.928926, 0),
             ("H", -1.232077, 0.928926, 0), ("H", -1.232077, -0.928926, 0)),
}  # fmt: skip


@dataclass(frozen=True)
class Calc:
    """One single-point energy: a molecule, a method and how it runs."""

    molecule: str
    method: str
    variant: str

    @property
    def label(self) -> str:
        return f"{self.molecule}-{self.method}-{self.variant}"

    @property
    def ranks(self) -> int:
        return RANKS[self.variant]


def bohr(molecule: str) -> list[Atom]:
    """The molecule's atoms with coordinates in bohr."""
    return [(a, x / BOHR, y / BOHR, z / BOHR) for a, x, y, z in MOLECULES[molecule]]


def nwchem_input(molecule: str, method: str, basis: str) -> str:
    """An NWChem input computing the energy (``start`` files go to the working directory)."""
    atoms = "\n".join(f"  {a} {x:.12f} {y:.12f} {z:.12f}" for a, x, y, z in bohr(molecule))
    if method == "scf":
        body = "scf\n  thresh 1e-10\nend\ntask scf energy\n"
    else:
        body = "dft\n  xc xpbe96 cpbe96\n  grid xfine\n  convergence energy 1e-10\nend\ntask dft energy\n"
    return (f"start {molecule}_{method}\ngeometry units bohr noautoz\n{atoms}\nend\n"
            f"basis spherical\n  * library {basis}\nend\n{body}")  # fmt: skip


_ENERGY = re.compile(r"Total (?:SCF|DFT) energy =\s+(-?\d+\.\d+)")


def parse_energy(text: str) -> float:
    """The last total SCF or DFT energy an NWChem output prints."""
    found = _ENERGY.findall(text)
    if not found:
        raise ValueError(f"no 'Total SCF/DFT energy' in the NWChem output (its end: {text[-500:]!r})")
    return float(found[-1])


def pyscf_energy(molecule: str, method: str, basis: str, threads: int = 1) -> float:
    """The same energy by PySCF: RHF, or RKS with PBE, spherical basis functions."""
    from pyscf import dft, gto, lib, scf

    lib.num_threads(threads)
    mol = gto.M(atom=[(a, (x, y, z)) for a, x, y, z in bohr(molecule)], unit="Bohr", basis=basis, cart=False,
                verbose=0)  # fmt: skip
    if method == "scf":
        mf = scf.RHF(mol)
    else:
        mf = dft.RKS(mol)
        mf.xc = "pbe"
        mf.grids.level = 5
    mf.conv_tol = 1e-11
    mf.chkfile = None  # no HDF5 checkpoint: two tasks in one worker process collided on the file's lock
    energy = float(mf.kernel())
    if not mf.converged:
        raise RuntimeError(f"PySCF {method} of {molecule}/{basis} did not converge")
    return energy


def run_direct(argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run an NWChem command in ``workdir`` (made): its energy and the seconds it took."""
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    return parse_energy(done.stdout), elapsed
