"""Pure parts of skyport.launch: binding, hostfiles, environment, ssh arguments, commands."""

from __future__ import annotations

import pytest

from skyport.launch.hostfile import hostfile_text, parse_hostfile
from skyport.launch.layout import propagated_names, rank_cores
from skyport.launch.mpiexec import build_command
from skyport.launch.rsh import parse_ssh_args, undaemonize


def test_ranks_get_disjoint_blocks_of_their_node() -> None:
    assert [rank_cores(r, 2, [4, 5, 6, 7]) for r in range(2)] == [[4, 5], [6, 7]]
    assert rank_cores(1, 2, [0, 1]) == [0, 1]  # virtual cores wrap onto the physical ones
    with pytest.raises(ValueError):
        rank_cores(0, 0, [0])


def test_hostfile_formats_round_trip() -> None:
    names = ["c-n0", "c-n1"]
    assert hostfile_text(names, 2) == "c-n0:2\nc-n1:2\n"
    assert hostfile_text(names, 3, "openmpi") == "c-n0 slots=3\nc-n1 slots=3\n"
    assert parse_hostfile("c-n0 slots=3\n# x\nc-n1:2\n") == [("c-n0", 3), ("c-n1", 2)]


def test_node_variables_stay_on_their_node() -> None:
    env = {"SKYPORT_NODE_NAME": "n0", "CUDA_VISIBLE_DEVICES": "0", "FOO": "1",
           "PMI_RANK": "0", "BASH_FUNC_x%%": "()", "SKYPORT_THREADS_PER_RANK": "2"}
    assert propagated_names(env) == ["FOO", "SKYPORT_THREADS_PER_RANK"]


def test_ssh_style_arguments() -> None:
    assert parse_ssh_args(["-x", "n1", "/bin/proxy", "--a"]) == ("n1", "/bin/proxy --a")
    assert parse_ssh_args(["-p", "22", "-o", "X=y", "u@n2", "cmd"]) == ("n2", "cmd")
    with pytest.raises(ValueError):
        parse_ssh_args(["-x", "n1"])
    assert undaemonize("prted --daemonize --x 1") == "prted --x 1"
    assert undaemonize("echo --daemonize") == "echo --daemonize"


def test_mpich_command_lays_ranks_out_in_node_order() -> None:
    argv, _ = build_command("mpich", ["a", "b"], 2, ["./hybrid"], env={"FOO": "1"},
                            rsh="/r", python="/py", launcher="/bin/mpiexec")
    assert argv[:9] == ["/bin/mpiexec", "-launcher", "ssh", "-launcher-exec", "/r", "-hosts",
                        "a:2,b:2", "-n", "4"]
    assert argv[-5:] == ["/py", "-m", "skyport.launch.rank", "--", "./hybrid"]
    assert "FOO" in argv[argv.index("-genvlist") + 1]
    argv, env = build_command("openmpi", ["a"], 1, ["x"], env={}, rsh="/r", python="/py",
                              launcher="/o/bin/mpirun")
    assert "plm_rsh_agent" in argv and env["OPAL_PREFIX"] == "/o"
    assert "-iface" not in build_command("mpich", ["a"], 1, ["x"], env={}, rsh="/r",
                                         python="/py", launcher="/bin/mpiexec")[0]


def test_nodes_with_a_network_of_their_own_make_mpich_bind_its_interface() -> None:
    argv, _ = build_command("mpich", ["a", "b"], 2, ["./hybrid"],
                            env={"SKYPORT_NET_IFACE": "sky0"}, rsh="/r", python="/py",
                            launcher="/bin/mpiexec")
    assert argv[argv.index("-iface") + 1] == "sky0"
    assert argv.index("-iface") < argv.index("/py")  # Hydra's option, not the rank's


def test_nodes_with_a_network_of_their_own_make_open_mpi_use_its_interface() -> None:
    def mca(argv: list[str]) -> dict[str, str]:
        return {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv[:-2]) if a == "--mca"}

    for extra in ({}, {"SKYPORT_OPENMPI_ARGS": "--mca btl self,tcp"}):  # the user's transports
        argv, _ = build_command("openmpi", ["a", "b"], 2, ["./hybrid"],
                                env={"SKYPORT_NET_IFACE": "sky0", **extra}, rsh="/r",
                                python="/py", launcher="/o/bin/mpirun")
        got = mca(argv[:argv.index("/py")])  # mpirun's options, not the rank's
        assert got["btl_tcp_if_include"] == got["oob_tcp_if_include"] == "sky0", argv
    argv, _ = build_command("openmpi", ["a"], 1, ["x"], env={}, rsh="/r", python="/py",
                            launcher="/o/bin/mpirun")
    assert "btl_tcp_if_include" not in argv and "oob_tcp_if_include" not in argv
