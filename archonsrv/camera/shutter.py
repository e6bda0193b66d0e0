"""Shutter and trigger-input commands."""

from __future__ import annotations

from .core import Camera, CommandError, int_arg
from .exposure import MAX_NSEQ, start_trigger_thread
from .table import command


@command("shutter")
def shutter(cam: Camera, args: str) -> str:
    a = args.strip().lower()
    if a in ("enable", "disable"):
        if not cam.cfg.shutenable_param:
            raise CommandError("SHUTENABLE_PARAM is not configured")
        cam.need_loaded()
        value = cam.cfg.shutenable_enable if a == "enable" else cam.cfg.shutenable_disable
        cam.setp(cam.cfg.shutenable_param, value)
        cam._shutter_written = value
        cam.shutter_enabled = a == "enable"
    elif a in ("open", "close"):
        cam.need_loaded()
        cam.write_key("TRIGOUTFORCE", "1")
        cam.write_key("TRIGOUTLEVEL", "1" if a == "open" else "0", cam.ctl.apply_system)
        cam.shutter_forced = "OPEN" if a == "open" else "CLOSED"
    elif a == "reset":
        cam.need_loaded()
        cam.write_key("TRIGOUTFORCE", "0", cam.ctl.apply_system)
        cam.shutter_forced = None
    elif a:
        raise CommandError(f"expected enable, disable, open, close or reset, got {a[:20]!r}")
    elif not cam.cfg.shutenable_param and cam.shutter_forced is None:
        raise CommandError("SHUTENABLE_PARAM is not configured")
    if cam.shutter_forced:
        return cam.shutter_forced
    return "enabled" if cam.shutter_enabled else "disabled"


@command("trigin")
def trigin(cam: Camera, args: str) -> str:
    parts = args.split()
    if not parts or len(parts) > 2:
        raise CommandError("usage: trigin <expose [N]|untimed|readout|disable>")
    form = parts[0].lower()
    c = cam.cfg
    if form not in ("expose", "untimed", "readout", "disable"):
        raise CommandError(f"unknown trigin form {parts[0][:20]!r}")
    if len(parts) == 2 and form != "expose":
        raise CommandError(f"trigin {form} takes no argument")
    cam.need_loaded()
    if cam.mode is None:
        raise CommandError("no mode selected")
    need = {
        "expose": ("TRIGIN_EXPOSE_PARAM", c.trigin_expose_param),
        "untimed": ("TRIGIN_UNTIMED_PARAM", c.trigin_untimed_param),
        "readout": ("TRIGIN_READOUT_PARAM", c.trigin_readout_param),
    }
    if form in need and not need[form][1]:
        raise CommandError(f"{need[form][0]} not defined")
    n = int_arg(parts[1], "trigger count", 1, MAX_NSEQ) if len(parts) == 2 else 1
    if form == "disable":
        cam.stop_trigger()
    elif cam.trig_thread is not None and cam.trig_thread.is_alive():
        raise CommandError("a triggered exposure is already armed (trigin disable first)")
    expose_v = str(n) if form == "expose" else "0"
    untimed_v = c.trigin_untimed_enable if form == "untimed" else c.trigin_untimed_disable
    readout_v = c.trigin_readout_enable if form == "readout" else c.trigin_readout_disable
    for name, value in (
        (c.trigin_expose_param, expose_v),
        (c.trigin_untimed_param, untimed_v),
        (c.trigin_readout_param, readout_v),
    ):
        if name:
            cam.setp(name, value)
    if form in ("expose", "readout"):
        if not cam.expose_lock.acquire(blocking=False):
            raise CommandError("an exposure is in progress")
        start_trigger_thread(cam, n, form)
    return ""
