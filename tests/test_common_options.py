"""--config option files and their SIGHUP reload (common.options), in process."""

from __future__ import annotations

import logging

import pytest

from common import cli
from common import log as clog
from common.config import ConfigError
from common.options import LiveOptions, parse_quietly

pytestmark = pytest.mark.timeout(30)


def make(tmp_path, text: str):
    conf = tmp_path / "prog.conf"
    conf.write_text(text)
    p = cli.make_parser("prog", "test program", config_option=("--config",))
    p.add_argument("--max-clients", type=int, default=3)
    p.add_argument("--port", type=int, default=5000)
    cli.add_runtime_args(p)
    argv = ["--config", str(conf)]
    return p, argv, conf


def test_file_values_apply_and_command_line_wins(tmp_path):
    p, argv, _ = make(tmp_path, "max-clients = 7\nport = 6000\n")
    args = parse_quietly(p, argv)
    assert (args.max_clients, args.port) == (7, 6000)
    args = parse_quietly(p, [*argv, "--port", "6001"])
    assert args.port == 6001


def test_reload_applies_live_and_names_restart_options(tmp_path, caplog):
    p, argv, conf = make(tmp_path, "max-clients = 7\n")
    args = parse_quietly(p, argv)
    seen = []
    live = LiveOptions(p, argv, args, {"max_clients": seen.append})
    conf.write_text("max-clients = 2\nport = 6000\n")
    with caplog.at_level(logging.WARNING, logger="common.options"):
        summary = live.reload()
    assert seen == [2]
    assert args.max_clients == 2
    assert args.port == 5000, "a restart-only option keeps the value in force"
    assert "applied max-clients" in summary and "port" in summary
    assert any(
        "need a restart" in r.getMessage() and "port" in r.getMessage() for r in caplog.records
    )
    assert live.reload() == "need a restart: port"


def test_reload_rejects_a_bad_file_and_keeps_the_old(tmp_path):
    p, argv, conf = make(tmp_path, "max-clients = 7\n")
    args = parse_quietly(p, argv)
    live = LiveOptions(p, argv, args, {"max_clients": lambda v: None})
    conf.write_text("max-clients = lots\n")
    with pytest.raises(ConfigError, match="max.clients"):
        live.reload()
    conf.write_text("no-such-option = 1\n")
    with pytest.raises(ConfigError, match="no-such-option"):
        live.reload()
    assert args.max_clients == 7


def test_verbose_is_live_and_only_for_the_suite(tmp_path):
    p, argv, conf = make(tmp_path, "")
    clog.setup_logging("prog", logging.INFO, None)
    try:
        args = parse_quietly(p, argv)
        live = LiveOptions(p, argv, args)
        conf.write_text("verbose = 1\n")
        live.reload()
        assert logging.getLogger("common").getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("h5py").getEffectiveLevel() == logging.WARNING
    finally:
        clog.setup_logging("pytest", logging.INFO, None)
        logging.getLogger().setLevel(logging.WARNING)


def test_version_option(capsys):
    p = cli.make_parser("prog", "test program")
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("prog (beamline-servers) ")


def test_a_relative_option_file_is_found_again_from_another_directory(tmp_path, monkeypatch):
    """A daemon works in /: the file named at start must still be re-read on SIGHUP."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel.conf").write_text("max-clients = 7\n")
    p = cli.make_parser("prog", "test program", config_option=("--config",))
    p.add_argument("--max-clients", type=int, default=3)
    argv = ["--config", "rel.conf"]
    args = parse_quietly(p, argv)
    seen = []
    live = LiveOptions(p, argv, args, {"max_clients": seen.append})
    monkeypatch.chdir("/")
    (tmp_path / "rel.conf").write_text("max-clients = 5\n")
    assert live.reload() == "applied max-clients"
    assert seen == [5]
