"""Launchers are pure argv builders: tables of specs and the exact argv expected."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping

import pytest

from balsam_dask.errors import InvalidSpec, LauncherError
from balsam_dask.mpi_tasks.detect import parse_version
from balsam_dask.mpi_tasks.launchers import (
    LAUNCHERS,
    AprunLauncher,
    JsrunLauncher,
    LaunchSpec,
    MpichLauncher,
    OpenMPILauncher,
    PalsLauncher,
    SrunLauncher,
    detect_launcher,
    get_launcher,
    resolve_launcher,
)
from balsam_dask.spec import Resources

ONE = LaunchSpec(argv=("./app",))
WIDE = LaunchSpec(argv=("./app", "-x"), resources=Resources(nodes=2, ranks_per_node=2, threads_per_rank=2))
GPU = LaunchSpec(argv=("./app",), resources=Resources(ranks_per_node=2, gpus_per_rank=1), gpu_ids=("0", "1"))
ENV = LaunchSpec(argv=("./app",), env=(("A", "1"), ("B", "x y")))
EXTRA = LaunchSpec(argv=("./app",), extra_args=("--verbose",))
NOBIND = LaunchSpec(argv=("./app",), resources=Resources(ranks_per_node=4, threads_per_rank=2), cpu_bind=False)

NO_BATCH = {"OMPI_MCA_ras": "^slurm,tm,pbs,lsf,gridengine,alps", "PRTE_MCA_ras": "^slurm,tm,pbs,lsf,gridengine,alps"}
H1 = ["n1"]
H2 = ["n1", "n2"]
NID1 = ["nid00001"]
NID2 = ["nid00001", "nid00002"]

CASES = [
    # --- MPICH / Hydra ---------------------------------------------------------------
    ("mpich", ONE, H1, "mpiexec -n 1 -ppn 1 -hosts n1 -bind-to core:1 ./app"),
    ("mpich", WIDE, H2, "mpiexec -n 4 -ppn 2 -hosts n1,n2 -bind-to core:2 ./app -x"),
    ("mpich", GPU, H1, "mpiexec -n 2 -ppn 2 -hosts n1 -bind-to core:1 ./app"),
    ("mpich", ENV, H1, "mpiexec -n 1 -ppn 1 -hosts n1 -bind-to core:1 -genv A 1 -genv B |x y| ./app"),
    ("mpich", EXTRA, H1, "mpiexec -n 1 -ppn 1 -hosts n1 -bind-to core:1 --verbose ./app"),
    ("mpich", NOBIND, H1, "mpiexec -n 4 -ppn 4 -hosts n1 -bind-to none ./app"),
    # --- Open MPI --------------------------------------------------------------------
    (
        "openmpi",
        ONE,
        H1,
        "mpirun -np 1 --map-by ppr:1:node:PE=1 --bind-to core --host n1:1 -x OMP_NUM_THREADS ./app",
    ),
    (
        "openmpi",
        WIDE,
        H2,
        "mpirun -np 4 --map-by ppr:2:node:PE=2 --bind-to core --host n1:2,n2:2 -x OMP_NUM_THREADS ./app -x",
    ),
    (
        "openmpi",
        GPU,
        H1,
        "mpirun -np 2 --map-by ppr:2:node:PE=1 --bind-to core --host n1:2 -x OMP_NUM_THREADS "
        "-x CUDA_VISIBLE_DEVICES ./app",
    ),
    (
        "openmpi",
        ENV,
        H1,
        "mpirun -np 1 --map-by ppr:1:node:PE=1 --bind-to core --host n1:1 -x OMP_NUM_THREADS -x A=1 -x |B=x y| ./app",
    ),
    (
        "openmpi",
        EXTRA,
        H1,
        "mpirun -np 1 --map-by ppr:1:node:PE=1 --bind-to core --host n1:1 -x OMP_NUM_THREADS --verbose ./app",
    ),
    (
        "openmpi",
        NOBIND,
        H1,
        "mpirun -np 4 --map-by ppr:4:node --bind-to none --host n1:4 -x OMP_NUM_THREADS ./app",
    ),
    # --- Slurm srun ------------------------------------------------------------------
    (
        "srun",
        ONE,
        H1,
        "srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=1 --nodelist=n1 --exact "
        "--cpu-bind=cores --mpi=pmi2 --export=ALL ./app",
    ),
    (
        "srun",
        WIDE,
        H2,
        "srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=2 --nodelist=n1,n2 --exact "
        "--cpu-bind=cores --mpi=pmi2 --export=ALL ./app -x",
    ),
    (
        "srun",
        GPU,
        H1,
        "srun --nodes=1 --ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 --nodelist=n1 --exact "
        "--cpu-bind=cores --gpus-per-task=1 --mpi=pmi2 --export=ALL ./app",
    ),
    (
        "srun",
        ENV,
        H1,
        "srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=1 --nodelist=n1 --exact "
        "--cpu-bind=cores --mpi=pmi2 --export=ALL ./app",
    ),
    (
        "srun",
        EXTRA,
        H1,
        "srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=1 --nodelist=n1 --exact "
        "--cpu-bind=cores --mpi=pmi2 --export=ALL --verbose ./app",
    ),
    (
        "srun",
        NOBIND,
        H1,
        "srun --nodes=1 --ntasks=4 --ntasks-per-node=4 --cpus-per-task=2 --nodelist=n1 --exact "
        "--cpu-bind=none --mpi=pmi2 --export=ALL ./app",
    ),
    # --- Cray aprun ------------------------------------------------------------------
    ("aprun", ONE, NID1, "aprun -n 1 -N 1 -d 1 -cc depth -L 1 ./app"),
    ("aprun", WIDE, NID2, "aprun -n 4 -N 2 -d 2 -cc depth -L 1,2 ./app -x"),
    ("aprun", GPU, ["17"], "aprun -n 2 -N 2 -d 1 -cc depth -L 17 ./app"),
    ("aprun", ENV, NID1, "aprun -n 1 -N 1 -d 1 -cc depth -L 1 -e A=1 -e |B=x y| ./app"),
    ("aprun", EXTRA, NID1, "aprun -n 1 -N 1 -d 1 -cc depth -L 1 --verbose ./app"),
    ("aprun", NOBIND, NID1, "aprun -n 4 -N 4 -d 2 -cc none -L 1 ./app"),
    # --- LSF jsrun -------------------------------------------------------------------
    (
        "jsrun",
        ONE,
        H1,
        "jsrun --nrs 1 --rs_per_host 1 --tasks_per_rs 1 --cpu_per_rs 1 --gpu_per_rs 0 --bind packed:1 ./app",
    ),
    (
        "jsrun",
        WIDE,
        H2,
        "jsrun --nrs 2 --rs_per_host 1 --tasks_per_rs 2 --cpu_per_rs 4 --gpu_per_rs 0 --bind packed:2 ./app -x",
    ),
    (
        "jsrun",
        GPU,
        H1,
        "jsrun --nrs 1 --rs_per_host 1 --tasks_per_rs 2 --cpu_per_rs 2 --gpu_per_rs 2 --bind packed:1 ./app",
    ),
    (
        "jsrun",
        ENV,
        H1,
        "jsrun --nrs 1 --rs_per_host 1 --tasks_per_rs 1 --cpu_per_rs 1 --gpu_per_rs 0 "
        "--bind packed:1 -E A=1 -E |B=x y| ./app",
    ),
    (
        "jsrun",
        EXTRA,
        H1,
        "jsrun --nrs 1 --rs_per_host 1 --tasks_per_rs 1 --cpu_per_rs 1 --gpu_per_rs 0 --bind packed:1 --verbose ./app",
    ),
    (
        "jsrun",
        NOBIND,
        H1,
        "jsrun --nrs 1 --rs_per_host 1 --tasks_per_rs 4 --cpu_per_rs 8 --gpu_per_rs 0 --bind none ./app",
    ),
    # --- PALS mpiexec ----------------------------------------------------------------
    ("pals", ONE, H1, "mpiexec -n 1 --ppn 1 --depth 1 --cpu-bind depth --hosts n1 ./app"),
    ("pals", WIDE, H2, "mpiexec -n 4 --ppn 2 --depth 2 --cpu-bind depth --hosts n1,n2 ./app -x"),
    ("pals", GPU, H1, "mpiexec -n 2 --ppn 2 --depth 1 --cpu-bind depth --hosts n1 ./app"),
    (
        "pals",
        ENV,
        H1,
        "mpiexec -n 1 --ppn 1 --depth 1 --cpu-bind depth --hosts n1 --env A=1 --env |B=x y| ./app",
    ),
    (
        "pals",
        EXTRA,
        H1,
        "mpiexec -n 1 --ppn 1 --depth 1 --cpu-bind depth --hosts n1 --verbose ./app",
    ),
    ("pals", NOBIND, H1, "mpiexec -n 4 --ppn 4 --depth 2 --cpu-bind none --hosts n1 ./app"),
]


def _argv(text: str) -> list[str]:
    """Expected argv written as words; |...| groups words with spaces into one argument."""
    out: list[str] = []
    for i, chunk in enumerate(text.split("|")):
        out += [chunk] if i % 2 else chunk.split()
    return out


@pytest.mark.parametrize(
    ("name", "spec", "hosts", "expected"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_command(name: str, spec: LaunchSpec, hosts: list[str], expected: str) -> None:
    argv = get_launcher(name).command(spec, hosts)
    assert argv == _argv(expected)
    assert all(isinstance(a, str) for a in argv)


def test_every_flavour_has_cases() -> None:
    assert {c[0] for c in CASES} == set(LAUNCHERS)


@pytest.mark.parametrize(
    ("name", "spec", "hosts", "expected"),
    [
        ("mpich", WIDE, H2, {"OMP_NUM_THREADS": "2"}),
        ("mpich", GPU, H1, {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0,1"}),
        ("mpich", ENV, H1, {"OMP_NUM_THREADS": "1"}),
        ("pals", GPU, H1, {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0,1"}),
        ("aprun", WIDE, NID2, {"OMP_NUM_THREADS": "2"}),
        ("jsrun", NOBIND, H1, {"OMP_NUM_THREADS": "2"}),
        ("openmpi", WIDE, H2, {"OMP_NUM_THREADS": "2", **NO_BATCH}),
        # srun carries the task's variables on its own environment (--export=ALL).
        ("srun", ENV, H1, {"OMP_NUM_THREADS": "1", "A": "1", "B": "x y"}),
        ("srun", GPU, H1, {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0,1"}),
    ],
)
def test_environ(name: str, spec: LaunchSpec, hosts: list[str], expected: Mapping[str, str]) -> None:
    assert get_launcher(name).environ(spec, hosts) == expected


def test_user_env_overrides_srun_defaults() -> None:
    spec = LaunchSpec(argv=("./app",), env={"OMP_NUM_THREADS": "7"})
    assert SrunLauncher().environ(spec, H1)["OMP_NUM_THREADS"] == "7"


def test_openmpi_user_value_is_not_forwarded_twice() -> None:
    spec = LaunchSpec(argv=("./app",), env={"OMP_NUM_THREADS": "3"})
    argv = OpenMPILauncher().command(spec, H1)
    assert argv.count("-x") == 1
    assert argv[argv.index("-x") + 1] == "OMP_NUM_THREADS=3"


def test_openmpi_as_root_environ() -> None:
    env = get_launcher("openmpi", {"as_root": True}).environ(ONE, H1)
    assert env == {
        "OMP_NUM_THREADS": "1",
        **NO_BATCH,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in OpenMPILauncher().environ(ONE, H1)


def test_openmpi_takes_the_placers_hosts_not_the_batch_jobs_allocation_unless_the_task_says() -> None:
    spec = LaunchSpec(argv=("./app",), env={"PRTE_MCA_ras": "slurm"})
    assert OpenMPILauncher().environ(spec, H1) == {"OMP_NUM_THREADS": "1", "OMPI_MCA_ras": NO_BATCH["OMPI_MCA_ras"],
                                                   "PRTE_MCA_ras": "slurm"}  # fmt: skip


def test_srun_options() -> None:
    argv = get_launcher("srun", {"mpi": "pmix", "overlap": True}).command(ONE, H1)
    assert "--mpi=pmix" in argv
    assert "--overlap" in argv
    assert "--exact" not in argv


def test_packs() -> None:
    assert {name: cls.packs for name, cls in LAUNCHERS.items()} == {
        "aprun": False,
        "jsrun": True,
        "mpich": True,
        "openmpi": True,
        "pals": True,
        "srun": True,
    }


# --- registry ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("mpich", MpichLauncher),
        ("mpiexec", MpichLauncher),
        ("MPICH", MpichLauncher),
        ("mpirun", OpenMPILauncher),
        ("openmpi", OpenMPILauncher),
        ("srun", SrunLauncher),
        ("aprun", AprunLauncher),
        ("jsrun", JsrunLauncher),
        ("pals", PalsLauncher),
    ],
)
def test_get_launcher(name: str, cls: type) -> None:
    assert type(get_launcher(name)) is cls


def test_unknown_launcher() -> None:
    with pytest.raises(
        LauncherError,
        match=r"unknown launcher 'mpiexecc'; use one of: aprun, jsrun, mpich, openmpi, pals, srun",
    ):
        get_launcher("mpiexecc")
    with pytest.raises(LauncherError, match="unknown launcher None"):
        get_launcher(None)


def test_launcher_options() -> None:
    # Options of other flavours are ignored (one configuration serves every flavour) ...
    assert get_launcher("mpich", {"as_root": True, "mpi": "pmi2"}) == MpichLauncher()
    # ... but a name no flavour takes is a mistake.
    with pytest.raises(LauncherError, match=r"unknown launcher option\(s\) 'as_rot'.*as_root \(openmpi\)"):
        get_launcher("openmpi", {"as_rot": True})
    with pytest.raises(LauncherError, match=r"mpi='pmi3' is invalid for srun.*pmi2"):
        get_launcher("srun", {"mpi": "pmi3"})
    with pytest.raises(LauncherError, match="as_root='yes' is invalid"):
        OpenMPILauncher(as_root="yes")


def test_executable_option() -> None:
    for name in LAUNCHERS:
        launcher = get_launcher(name, {"executable": "/opt/x/bin/launch"})
        assert launcher.command(ONE, NID1)[0] == "/opt/x/bin/launch"
        assert get_launcher(name).command(ONE, NID1)[0] == LAUNCHERS[name].program
    assert get_launcher("mpich", {"executable": "/a/mpiexec"}) != MpichLauncher()
    with pytest.raises(LauncherError, match=r"executable='' is invalid.*executable='/opt/mpich/bin/mpiexec'"):
        MpichLauncher(executable="")
    with pytest.raises(LauncherError, match=r"executable \(all\)"):
        get_launcher("mpich", {"exe": "x"})


def test_launcher_error_pickles() -> None:
    with pytest.raises(LauncherError) as info:
        get_launcher("nope")
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is LauncherError
    assert str(again) == str(info.value)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_wrong_host_count(name: str) -> None:
    hosts = ["nid00001"]
    with pytest.raises(LauncherError, match=r"got 1 host\(s\) \['nid00001'\] for a task on nodes=2"):
        get_launcher(name).command(WIDE, hosts)
    with pytest.raises(LauncherError, match=r"got 3 host\(s\)"):
        get_launcher(name).command(WIDE, ["nid00001", "nid00002", "nid00003"])


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_duplicate_hosts(name: str) -> None:
    with pytest.raises(LauncherError, match="name a node twice"):
        get_launcher(name).command(WIDE, ["nid00001", "nid00001"])


@pytest.mark.parametrize("bad", ["a,b", "host:2", "", "two words", "n*2"])
def test_bad_host_names(bad: str) -> None:
    with pytest.raises(LauncherError, match=r"host name .* is invalid"):
        MpichLauncher().command(ONE, [bad])


def test_hosts_as_string_rejected() -> None:
    with pytest.raises(LauncherError, match="give a list of host names"):
        MpichLauncher().command(ONE, "n1")


def test_aprun_needs_node_ids() -> None:
    with pytest.raises(LauncherError, match=r"'login1' is not a Cray node id.*'nid00012' or '12'"):
        AprunLauncher().command(ONE, ["login1"])
    with pytest.raises(LauncherError, match="name a node twice"):
        AprunLauncher().command(WIDE, ["nid00007", "7"])


# --- LaunchSpec validation ---------------------------------------------------------------


def test_spec_normalises_inputs() -> None:
    spec = LaunchSpec(
        argv=["./app", "1"],
        resources=Resources(gpus_per_rank=2),
        env={"X": "1"},
        extra_args=["-v"],
        gpu_ids=[2, 3],
    )
    assert spec.argv == ("./app", "1")
    assert spec.env == (("X", "1"),)
    assert spec.extra_args == ("-v",)
    assert spec.gpu_ids == ("2", "3")
    assert hash(spec) == hash(LaunchSpec(**spec.__dict__))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"argv": ()}, r"first entry must name the program.*argv=\('./sim'"),
        ({"argv": "./sim --n 4"}, r"give a list of strings"),
        ({"argv": ("./sim", 4)}, r"argv entry 4 is invalid"),
        ({"argv": ("./a",), "resources": {"nodes": 2}}, r"pass a balsam_dask.spec.Resources"),
        ({"argv": ("./a",), "env": {"1X": "a"}}, r"env name '1X' is invalid"),
        ({"argv": ("./a",), "env": {"X": 1}}, r"env X=1 is invalid: values must be strings"),
        ({"argv": ("./a",), "env": "X=1"}, r"give a mapping of names to strings"),
        ({"argv": ("./a",), "extra_args": "-v"}, r"extra_args='-v' is invalid"),
        ({"argv": ("./a",), "cpu_bind": "yes"}, r"cpu_bind='yes' is invalid"),
        ({"argv": ("./a",), "gpu_ids": ("0", "0")}, r"lists a GPU twice"),
        ({"argv": ("./a",), "gpu_ids": ("0,1",)}, r"gpu id '0,1' is invalid"),
        (
            {"argv": ("./a",), "resources": Resources(ranks_per_node=2, gpus_per_rank=1), "gpu_ids": ("0",)},
            r"lists 1 GPU\(s\) but the task needs 2 per node",
        ),
    ],
)
def test_spec_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidSpec, match=match):
        LaunchSpec(**kwargs)


# --- detection ----------------------------------------------------------------------------


def _which(*names: str) -> Callable[[str], str | None]:
    table = {n: f"/usr/bin/{n}" for n in names}
    return table.get


def _flavours(**by_exe: str | None) -> Callable[[str], str | None]:
    return lambda path: by_exe.get(path.rsplit("/", 1)[-1])


@pytest.mark.parametrize(
    ("environ", "on_path", "flavours", "expected"),
    [
        ({"SLURM_JOB_ID": "12"}, ("srun", "mpiexec"), {"mpiexec": "mpich"}, "srun"),
        ({"SLURM_JOBID": "12"}, ("srun",), {}, "srun"),
        # srun installed but not inside a Slurm job: not usable.
        ({}, ("srun", "mpiexec"), {"mpiexec": "mpich"}, "mpich"),
        ({"LSB_JOBID": "7"}, ("jsrun", "mpirun"), {"mpirun": "openmpi"}, "jsrun"),
        ({"LSB_JOBID": "7"}, ("mpirun",), {"mpirun": "openmpi"}, "openmpi"),
        ({"PBS_JOBID": "3.pbs"}, ("aprun", "mpiexec"), {"mpiexec": "mpich"}, "aprun"),
        ({"PBS_JOBID": "3.pbs"}, ("mpiexec",), {"mpiexec": "pals"}, "pals"),
        ({}, ("mpiexec", "mpirun"), {"mpiexec": None, "mpirun": "openmpi"}, "openmpi"),
        ({}, ("mpiexec", "mpirun"), {"mpiexec": "openmpi", "mpirun": "openmpi"}, "openmpi"),
        ({"SLURM_JOB_ID": "12"}, ("mpiexec",), {"mpiexec": "mpich"}, "mpich"),
    ],
)
def test_detect_launcher(
    environ: dict[str, str], on_path: tuple[str, ...], flavours: dict[str, str | None], expected: str
) -> None:
    assert detect_launcher(environ, _which(*on_path), _flavours(**flavours)) == expected


def test_detect_nothing() -> None:
    with pytest.raises(LauncherError, match=r"cannot detect the MPI launcher: no srun.*launcher='mpich'"):
        detect_launcher({}, _which(), _flavours())
    with pytest.raises(LauncherError, match=r"found /usr/bin/mpiexec \(flavour unknown\)"):
        detect_launcher({}, _which("mpiexec"), _flavours(mpiexec=None))


def test_detect_asks_flavour_only_of_found_binaries() -> None:
    asked: list[str] = []

    def flavour_of(path: str) -> str | None:
        asked.append(path)
        return "mpich"

    assert detect_launcher({}, _which("mpiexec"), flavour_of) == "mpich"
    assert asked == ["/usr/bin/mpiexec"]


def test_resolve_launcher() -> None:
    slurm = {"SLURM_JOB_ID": "1"}
    which, flavour_of = _which("srun", "mpiexec"), _flavours(mpiexec="mpich")
    # An explicit choice beats detection.
    assert type(resolve_launcher("pals", slurm, which, flavour_of)) is PalsLauncher
    assert type(resolve_launcher(None, slurm, which, flavour_of)) is SrunLauncher
    assert resolve_launcher("mpirun", {}, which, flavour_of, {"as_root": True}) == OpenMPILauncher(as_root=True)
    with pytest.raises(LauncherError, match="unknown launcher 'mpi'"):
        resolve_launcher("mpi", {}, which, flavour_of)


@pytest.mark.parametrize(
    ("text", "flavour"),
    [
        ("HYDRA build details:\n    Version: 4.2.1\n", "mpich"),
        ("mpirun (Open MPI) 4.1.4\n\nReport bugs to https://www.open-mpi.org/community/help/", "openmpi"),
        ("mpiexec (Open MPI) 5.0.3\n", "openmpi"),
        ("PALS mpiexec version 1.2.12", "pals"),
        ("Intel(R) MPI Library for Linux* OS, Version 2021.10", None),
        ("", None),
    ],
)
def test_parse_version(text: str, flavour: str | None) -> None:
    assert parse_version(text) == flavour
