"""camerad options and time zones: --config, TZ_ENV, TM_ZONE_LOG (issue 13.2)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.support import procs
from tests.support.archon_rig import Rig

pytestmark = pytest.mark.timeout(90)

UTC = dt.UTC


def _near(stamp: dt.datetime, offset_hours: int) -> bool:
    now = dt.datetime.now(UTC).replace(tzinfo=None) + dt.timedelta(hours=offset_hours)
    return abs((stamp - now).total_seconds()) < 120


def test_config_option_spelling_of_the_newer_original(tmp_path):
    r = Rig(tmp_path)  # writes the configuration; camerad started here by hand
    with procs.running("archonsrv.cli", "--config", str(r.cfgfile), wait_for=r.nbport):
        assert r.nb("echo via --config") == "via --config DONE"
        assert r.nb("config") == f"{r.cfgfile} DONE"


@pytest.mark.parametrize("log_zone,log_offset", [(None, 5), ("UTC", 0)])
def test_tz_env_and_log_time_zone(tmp_path, log_zone, log_offset):
    # Etc/GMT-5 is UTC+5 (POSIX sign); the host's own zone plays no part
    extra = {"TM_ZONE_LOG": log_zone} if log_zone else {}
    with Rig(tmp_path, TZ_ENV="Etc/GMT-5", TM_ZONE="local", **extra) as r:
        reply = r.nb("test fitsname")
        m = re.search(r"/(\d{8})/image_(\d{14})\.fits DONE$", reply)
        assert m, reply
        stamp = dt.datetime.strptime(m.group(2), "%Y%m%d%H%M%S")
        assert _near(stamp, 5) and m.group(1) == m.group(2)[:8]
        assert r.nb("echo logged") == "logged DONE"
        logs = list(r.logdir.glob("camerad_*.log"))
        assert len(logs) == 1
        line = next(x for x in logs[0].read_text().splitlines() if x[:4].isdigit())
        assert _near(dt.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"), log_offset), line
