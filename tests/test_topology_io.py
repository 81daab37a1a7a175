"""Graph files (decentralizepy formats), shipped topologies, user graphs, CLI."""

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import workbench.cli
from workbench.comm.host import to_host
from workbench.errors import DataError, ScenarioError
from workbench.topology import build_topology, read_graph, write_graph
from workbench.topology.cli import describe

REPO = Path(__file__).resolve().parents[1]


def test_edges_round_trip(tmp_path):
    G = nx.random_regular_graph(3, 10, seed=1)
    for suffix in (".edges", ".adj"):
        path = tmp_path / f"g{suffix}"
        write_graph(G, path)
        H = read_graph(path)
        assert sorted(H.nodes) == list(range(10))
        assert {frozenset(e) for e in H.edges} == {frozenset(e) for e in G.edges}
    first = (tmp_path / "g.edges").read_text().splitlines()
    assert first[0] == "10" and len(first) == 1 + 15  # n, then each edge once


def test_reads_decentralizepy_files_with_both_directions(tmp_path):
    path = tmp_path / "ring.txt"
    lines = ["4"] + [f"{i} {(i + d) % 4}" for i in range(4) for d in (1, 3)]
    path.write_text("\n".join(lines) + "\n\n# trailing comment\n")
    G = read_graph(path)
    assert G.number_of_edges() == 4 and dict(G.degree()) == {i: 2 for i in range(4)}
    adjacency = tmp_path / "ring.adjacency"
    adjacency.write_text("4\n1 3\n0 2\n1 3\n2 0\n")
    assert nx.utils.graphs_equal(read_graph(adjacency), G)
    topo = build_topology({"name": "file", "path": str(path)}, 4, seed=0)
    np.testing.assert_allclose(topo.W, build_topology({"name": "ring"}, 4, 0).W)


@pytest.mark.parametrize(
    "name,n,edges",
    [
        ("ring16", 16, 16),
        ("ring64", 64, 64),
        ("torus16", 16, 32),
        ("torus64", 64, 128),
        ("regular6_128", 128, 384),
        ("complete3", 3, 3),
    ],
)
def test_shipped_topologies_load(name, n, edges):
    topo = build_topology({"name": "file", "path": f"topologies/{name}.edges"}, n, 0)
    assert topo.info["num_edges"] == edges and topo.info["doubly_stochastic"]
    assert (REPO / "topologies" / "README.md").read_text().count(name) >= 1
    if name == "torus64":
        torus = build_topology({"name": "torus"}, 64, 0).info["rho"]
        assert topo.info["rho"] == pytest.approx(torus)
    if name == "complete3":
        assert topo.kernel == "mean"


BAD_FILES = [
    ("", "number of nodes"),
    ("x\n0 1\n", "number of nodes"),
    ("3\n0 1\n1 2 0\n", "expected 'u v'"),
    ("3\n0 a\n", "expected a node index"),
    ("3\n0 3\n", "out of range"),
]


@pytest.mark.parametrize("text,message", BAD_FILES)
def test_bad_files_raise_data_errors(tmp_path, text, message):
    path = tmp_path / "bad.edges"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_graph(path)
    assert "\n" not in str(err.value)


def test_file_topology_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_topology({"name": "file", "path": "nope.edges"}, 4, 0)
    two = tmp_path / "two.edges"
    two.write_text("4\n0 1\n2 3\n")
    with pytest.raises(ScenarioError, match="disconnected") as err:
        build_topology({"name": "file", "path": str(two)}, 4, 0)
    assert err.value.path == "topology"
    with pytest.raises(ScenarioError, match="n=5") as err:
        build_topology({"name": "file", "path": "topologies/ring16.edges"}, 5, 0)
    assert err.value.path == "topology.path"
    adj = tmp_path / "long.adj"
    adj.write_text("2\n1\n0\n0\n")
    with pytest.raises(DataError, match="adjacency lines"):
        read_graph(adj)


def test_file_sequence_is_periodic():
    spec = {
        "name": "file_sequence",
        "paths": ["topologies/ring16.edges", "topologies/torus16.edges"],
    }
    topo = build_topology(spec, 16, 0)
    assert topo.info["period"] == 2 and topo.info["doubly_stochastic"]
    torus = build_topology({"name": "torus"}, 16, 0).W
    np.testing.assert_allclose(
        to_host(topo.at(topo.data, 3, None), 16).toarray(), torus, atol=1e-7
    )  # round 3 -> the torus


def test_user_graph_by_import_path():
    topo = build_topology({"name": "user", "fn": "networkx:cycle_graph"}, 12, 0)
    np.testing.assert_allclose(topo.W, build_topology({"name": "ring"}, 12, 0).W)
    spec = {"name": "user", "fn": "networkx:random_regular_graph", "kwargs": {"d": 3}}
    a, b = (build_topology(spec, 12, seed=s).W for s in (0, 0))
    np.testing.assert_array_equal(a, b)
    for fn, key in (
        ("nope.mod:f", "topology.fn"),
        ("networkx", "topology.fn"),
        ("builtins:list", "topology.fn"),
    ):
        with pytest.raises(ScenarioError) as err:
            build_topology({"name": "user", "fn": fn}, 4, 0)
        assert err.value.path == key


def test_describe_json(capsys):
    assert describe(["ring:n=16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"n", "num_edges", "rho", "spectral_gap"} <= set(info)
    assert (info["n"], info["num_edges"]) == (16, 16)
    assert info["rho"] == pytest.approx(0.9492530216741912, abs=1e-12)
    assert info["spectral_gap"] == pytest.approx(1 - info["rho"])
    assert describe(["random_regular:n=64,d=4,seed=0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["degree_max"] == 4 and info["num_edges"] == 128
    assert describe([str(REPO / "topologies/torus16.edges"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rho"] == pytest.approx(0.6)


def test_describe_text_and_plot(capsys, tmp_path):
    assert describe(["torus:n=64"]) == 0
    out = capsys.readouterr().out
    assert "rho           0.882843" in out and "edges         128" in out
    png = tmp_path / "g.png"
    assert describe(["one_peer_exponential:n=8", "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "period 3" in out and out.endswith(f"\nwrote {png}\n")


def test_describe_plot_with_json_says_where_on_stderr(capsys, tmp_path):
    pdf = tmp_path / "ring.pdf"
    argv = ["topology", "describe", "ring:n=8", "--json", "--plot", str(pdf)]
    assert workbench.cli.main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 8  # stdout: one JSON object only
    assert captured.err == f"wrote {pdf}\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize(
    "name,message",
    [
        ("missing/g.png", "--plot {path}: directory {tmp}/missing does not exist"),
        (
            "g.pgn",
            "--plot {path}: unknown image format 'pgn' (did you mean 'png'?); "
            "expected a file ending in one of [",
        ),
        ("g", "--plot {path}: no file extension; expected a file ending in one of ["),
        ("adir.png", "--plot {path}: is a directory"),
    ],
)
def test_describe_bad_plot_path_is_one_line_exit_2(capsys, tmp_path, name, message):
    (tmp_path / "adir.png").mkdir()
    path = tmp_path / name
    argv = ["topology", "describe", "ring:n=8", "--plot", str(path)]
    assert workbench.cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    expected = "workbench topology describe: error: " + message.format(
        path=path, tmp=tmp_path
    )
    assert captured.err.startswith(expected) and captured.err.count("\n") == 1
    assert not path.is_file()


def test_describe_unwritable_plot_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    import matplotlib.figure

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse)
    png = tmp_path / "g.png"
    assert describe(["ring:n=8", "--plot", str(png)]) == 2
    assert capsys.readouterr().err == (
        f"workbench topology describe: error: --plot {png}: cannot write: "
        "Permission denied\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["nope:n=4"],
        ["ring:n=x"],
        ["ring:n"],
        ["random_regular:n=15,d=3"],
        ["ring", "--bad"],
        ["ring:n=4", "--seed", "x"],
    ],
)
def test_describe_bad_spec_is_one_line_exit_2(capsys, argv):
    assert describe(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
