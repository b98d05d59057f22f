"""Two processes joined by `jax.distributed` against one process with as many devices.

Two local `noisydln run` processes on the loopback address, two XLA host devices each (CPU
collectives through gloo), shard the seeds over a global mesh of four devices; one process
with four host devices runs the same spec. The statistics must be equal bit for bit (float64),
and only process 0 writes the results file.
"""

import contextlib
import io
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from noisydln import cli, results

# two processes that wait on each other, and one with four devices: all the run's cores
pytestmark = pytest.mark.usefixtures("every_core")

SPEC = """\
name = "distributed"

[problem]
n = 24
d = 4
design = "orthogonal"
beta_star = [1.0, -0.5, 0.05, 0.0]

[simulation]
num_steps = 200
record_every = 50
init = 0.5
eta = 0.05
quantities = ["beta", "imbalance", "loss"]

[grid]
num_seeds = 200
sigmas = [0.1, 0.3]
chunk_size = 64

[run]
dtype = "float64"
reference = false  # one compiled program per process: the test is about the sharding
"""

CODE = "import sys; from noisydln.cli import main; sys.exit(main(sys.argv[1:]))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv, devices: int) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        [sys.executable, "-c", CODE, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_vs_one_process_with_as_many_devices(tmp_path):
    spec = tmp_path / "distributed.toml"
    spec.write_text(SPEC)
    address = f"127.0.0.1:{_free_port()}"
    shared, alone = tmp_path / "two" / "out.nc", tmp_path / "one" / "out.nc"
    workers = [
        _start(
            [
                "run",
                str(spec),
                "-o",
                str(shared),
                "-q",
                "--coordinator",
                address,
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            devices=2,
        )  # fmt: skip
        for i in range(2)
    ]
    single = _start(["run", str(spec), "-o", str(alone), "-q"], devices=4)
    outputs = [p.communicate(timeout=400) for p in [*workers, single]]
    for process, (_, stderr) in zip([*workers, single], outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    assert "saved to" in outputs[0][0] and "saved to" not in outputs[1][0]  # only process 0 writes
    assert sorted(p.name for p in shared.parent.iterdir()) == ["out.nc"]

    two, one = results.load(shared), results.load(alone)
    assert two.attrs["device_count"] == one.attrs["device_count"] == 4
    for name in list(one.data_vars) + list(one.coords):
        a, b = two[name].values, one[name].values
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--coordinator", "127.0.0.1:1"], "give all three or none"),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "process_id"),
        (["--num-processes", "0"], "--num-processes: must be a positive integer"),
        (["--process-id", "-1"], "--process-id: must be an integer >= 0"),
    ],
)
def test_bad_cluster_flags_one_line(tmp_path, argv, fragment):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["run", str(spec), "-o", str(tmp_path / "o.nc"), *argv])
    assert status == 2 and fragment in err.getvalue(), err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
