"""``mvsync bench resilience``: faults, crashes and hostile input, with the figures as one JSON object.

The scenarios live here (not in the tests) so that ``tests/resilience`` and this benchmark run the
very same code; the tests assert on the figures these functions return, the benchmark prints them
with more trials.

* :func:`exo_import_under_faults`: a full Exchange Online import under the emulator's
  ``resilience`` fault mix (10 % 429 with Retry-After, 2 % 503, 1 % connection resets, 1 %
  truncated bodies) while access tokens expire every couple of seconds, compared photo by photo
  with a fault-free import of the same tenant. Time is scaled down: the issue's two-minute token
  lifetime against a ~20 s import becomes ~2 s, so a token still expires many times per import.
* :func:`export_across_dc_restart`: the AD export in batches, with the domain controller stopped
  after the first batch and started again (the Samba harness): what was not written stays pending,
  the next export finishes it, and what was written is not written again.
* :func:`crash_trials`: ``tests/harness/crash.py`` (kill -9 of the real CLI at seeded points).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "crash_trials",
    "exo_import_under_faults",
    "exo_photo_checksums",
    "export_across_dc_restart",
    "hostile_inputs",
    "restartable_dc",
    "run",
]

#: The issue's token lifetime is 2 minutes; scaled down with the tenant (see the module docstring).
SCALED_TOKEN_LIFETIME_S = 2


def _exo_only_config(root: Path, info: dict[str, Any], **exo_overrides: Any) -> Any:
    """A configuration with only the exo agent and one full-import profile (sample settings)."""
    from connector.config import config_from_dict
    from connector.demo import emulator_exo_settings, load_sample

    exo = emulator_exo_settings(load_sample(), info, root / "secrets", **exo_overrides)
    return config_from_dict(
        {
            "store": {"url": "sqlite:///mvsync.db"},
            "data_dir": "data",
            "agents": {"exo": {"type": "exchange-online-photos", "settings": exo}},
            "run_profiles": {"Full Import": {"steps": [{"type": "full-import", "agent": "exo"}]}},
        },
        base_dir=root,
    )


def exo_photo_checksums(config: Any) -> dict[str, str | None]:
    """Connector-space anchor -> staged ``EXOPhotoChecksum`` (None: the user has no photo)."""
    from connector.store import ConnectorSpace, SqlStore, loads

    store = SqlStore(config.store_url())
    try:
        with store.read() as conn:
            rows = list(ConnectorSpace(conn).objects("exo"))
    finally:
        store.close()
    out: dict[str, str | None] = {}
    for row in rows:
        doc = loads(row.pending or row.hologram or "{}", "cs_object", row.id, "pending or hologram")
        out[row.anchor] = doc.get("EXOPhotoChecksum")
    return out


def exo_import_under_faults(
    root: Path,
    *,
    users: int = 300,
    seed: int = 9,
    faults: str = "resilience",
    token_lifetime_s: int = SCALED_TOKEN_LIFETIME_S,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Import the same tenant without and with faults; the figures, and whether every photo matched.

    ``batch_size`` is small so that many whole HTTP requests cross the wire: resets and truncated
    bodies hit only whole requests (a ``$batch`` item can only be throttled or fail).
    """
    from connector.emulator import GraphEmulator
    from connector.engine import Engine

    lab_emulator_config = _crash().lab_emulator_config

    started = time.monotonic()
    cfg = lab_emulator_config(users=users, seed=seed)
    with GraphEmulator(cfg) as emu:
        info = emu.info
        results: dict[str, Any] = {}
        sums: dict[str, dict[str, str | None]] = {}
        for label, fault_spec, lifetime in (("clean", "none", 3600), ("faulted", faults, token_lifetime_s)):
            emu.admin.set_faults(fault_spec)
            emu.admin.set_access_token_lifetime(lifetime)
            emu.admin.reset_stats()
            config = _exo_only_config(root / label, info, batch_size=batch_size)
            engine = Engine(config)
            t0 = time.monotonic()
            try:
                result = engine.run_profile("Full Import")
            finally:
                engine.close()
            stats = emu.admin.stats()
            step = result.steps[0]
            sums[label] = exo_photo_checksums(config)
            results[label] = {
                "status": result.status,
                "seconds": round(time.monotonic() - t0, 1),
                "errors": step.error_count,
                "error_names": dict(Counter(e.error_name for e in step.errors)),
                "faults_injected": dict(stats.get("faults", {})),
                "throttled_429": int(stats.get("by_status", {}).get("429", 0)),
                "token_requests": int(stats.get("token_requests", 0)),
                "http_by_status": stats.get("http_by_status", {}),
                "graph": {k: v for k, v in step.counters.items() if isinstance(v, int | float)},
            }
        emu.admin.set_faults("none")
        expected_photos = sum(
            1 for u in emu.admin.users() if u.get("hasPhoto") and u.get("mail") and u["mailbox"] != "none"
        )
    clean, faulted = sums["clean"], sums["faulted"]
    missing = sorted(a for a in clean if a not in faulted)
    different = sorted(a for a in clean if a in faulted and faulted[a] != clean[a])
    photos = sum(1 for v in clean.values() if v)
    return {
        "users": users,
        "seed": seed,
        "fault_profile": faults,
        "token_lifetime_s": token_lifetime_s,
        "objects": len(clean),
        "photos": photos,
        "tenant_photos": expected_photos,
        "objects_missing": len(missing),
        "checksums_different": len(different),
        "identical": not missing and not different and len(clean) == len(faulted),
        "clean": results["clean"],
        "faulted": results["faulted"],
        "seconds": round(time.monotonic() - started, 1),
    }


def export_across_dc_restart(
    root: Path,
    dc: Any,
    *,
    restart: Callable[[], None],
    stop: Callable[[], None],
    seed: int = 5,
    users: int = 24,
    batch_size: int = 4,
    ou: str | None = None,
) -> dict[str, Any]:
    """Export thumbnails in batches; the DC goes down after the first batch and comes back.

    ``stop`` and ``restart`` stop and start the domain controller ``dc`` (the Samba harness).
    Returns what was written before the outage, what stayed pending, what the next export wrote,
    and whether anything was written twice (``uSNChanged`` of the first batch's objects).
    """
    from connector.agents.active_directory import ActiveDirectoryConnector
    from connector.config import RunStepConfig, RunStepKind, load_config
    from connector.demo import prepare_scenario
    from connector.emulator import GraphEmulator
    from connector.engine import Engine

    crash = _crash()
    CrashLab, lab_emulator_config, lab_tag, metaverse_state = (
        crash.CrashLab,
        crash.lab_emulator_config,
        crash.lab_tag,
        crash.metaverse_state,
    )

    started = time.monotonic()
    with GraphEmulator(lab_emulator_config(users=users, seed=seed)) as emu:
        lab = CrashLab(root, emu, ad=dc, ou=ou or f"OU=mvsync-restart-{lab_tag()}")
        scenario = prepare_scenario(
            root / "world", emu.info, lab.users, ad=dc, ad_ou=lab.ou, fallbacks=2, account_prefix=f"{lab.tag}-"
        )
        config = load_config(scenario.config_path)
        engine = Engine(config)
        original = ActiveDirectoryConnector.export
        batches: list[int] = []

        def export_then_outage(self: ActiveDirectoryConnector, changes: Any) -> Any:
            results = original(self, changes)
            batches.append(len(changes))
            if len(batches) == 1:
                stop()  # the DC goes away between two batches of one export step
            return results

        export_step = RunStepConfig.model_validate(
            {"type": RunStepKind.EXPORT, "agent": "ad", "batch_size": batch_size}
        )
        try:
            for profile in ("Full Import (Stage Only)", "Full Synchronization"):
                engine.run_profile(profile)
            _, staged, _ = metaverse_state(config.store_url())
            with _patched(ActiveDirectoryConnector, "export", export_then_outage):
                during = engine.run_steps("export during outage", [export_step])
            _, pending_after_outage, _ = metaverse_state(config.store_url())
            restart()
            photos_between, usn_between = lab.directory(scenario)
            after = engine.run_steps("export after restart", [export_step])
            confirm = engine.run_profile("Delta Cycle")
            final = engine.run_profile("Delta Cycle")
        finally:
            engine.close()
        photos_after, usn_after = lab.directory(scenario)
        _, pending_final, _ = metaverse_state(config.store_url())
        lab.cleanup()
    written_before = {sam for sam, sha in photos_between.items() if sha}
    step = during.steps[0]
    return {
        "staged_exports": staged,
        "batch_size": batch_size,
        "exported_before_outage": len(written_before),
        "outage_step_status": step.status,
        "outage_error_names": dict(Counter(e.error_name for e in step.errors)),
        "pending_after_outage": pending_after_outage,
        "exported_after_restart": int(after.steps[0].counters.get("export_updates", 0)),
        "after_restart_status": after.status,
        "rewritten_after_restart": sorted(sam for sam in written_before if usn_after[sam] != usn_between[sam]),
        "photos_in_directory": sum(1 for sha in photos_after.values() if sha),
        "pending_final": pending_final,
        "confirm_status": confirm.status,
        "final_cycle_exports": sum(int(s.counters.get("export_updates", 0)) for s in final.steps),
        "seconds": round(time.monotonic() - started, 1),
    }


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


# ------------------------------------------------------------------------------------ hostile
def odd_images() -> dict[str, bytes]:
    """Every odd kind of image a photo source delivers, by name (built with Pillow, no files)."""
    import io
    import struct
    import zlib

    from PIL import Image

    def save(image: Image.Image, fmt: str, **params: Any) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt, **params)
        return out.getvalue()

    rgb = Image.new("RGB", (300, 400), (200, 120, 40))
    jpeg = save(rgb, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # a 3.6-gigapixel header, no pixels
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    frames = [Image.new("P", (64, 64), c) for c in (1, 50, 100)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "plain-jpeg": jpeg,
        "cmyk-jpeg": save(rgb.convert("CMYK"), "JPEG"),
        "grayscale-jpeg": save(rgb.convert("L"), "JPEG"),
        "progressive-jpeg": save(rgb, "JPEG", progressive=True),
        "exif-rotated-jpeg": save(rgb, "JPEG", exif=exif.tobytes()),
        "png-alpha": save(Image.new("RGBA", (200, 200), (0, 0, 255, 0)), "PNG"),
        "png-16-bit": save(Image.new("I;16", (120, 120), 40000), "PNG"),
        "png-palette": save(rgb.convert("P"), "PNG"),
        "gif-1x1": save(Image.new("P", (1, 1)), "GIF"),
        "gif-animated": animated.getvalue(),
        "bmp": save(rgb, "BMP"),
        "tiff": save(rgb, "TIFF"),
        "webp": save(rgb, "WEBP"),
        "tiny-2x2": save(Image.new("RGB", (2, 2), (1, 2, 3)), "JPEG"),
        "very-wide": save(Image.new("RGB", (4000, 50), (9, 9, 9)), "JPEG"),
        "pixel-bomb-header": bomb,
        "truncated-jpeg": jpeg[: len(jpeg) // 2],
        "empty": b"",
        "garbage": bytes(range(256)) * 8,
        "svg-text": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "nul-bytes": b"\x00" * 1000,
    }


def _hostile_world(root: Path, photos: dict[str, bytes]) -> tuple[Any, Path]:
    """HR folder photos (undecoded) -> metaverse -> the LDIF directory stand-in's thumbnailPhoto."""
    from connector.config import config_from_dict
    from connector.demo import AD_SNAPSHOT_TYPE, write_ldif

    folder = root / "photos"
    folder.mkdir(parents=True)
    entries = []
    for i, (name, data) in enumerate(sorted(photos.items())):
        sam = f"img{i:03d}"
        (folder / f"{sam} {name}.jpg").write_bytes(data)
        guid = hashlib_uuid(sam)
        entries.append(
            {
                "dn": f"CN={sam},OU=Staff,DC=example,DC=test",
                "objectClass": "user",
                "objectGUID": guid,
                "sAMAccountName": sam,
                "uSNChanged": str(i + 1),
            }
        )
    snapshot = root / "directory.ldif"
    write_ldif(snapshot, entries)
    steps = [
        {"type": "full-import", "agent": "ad"},
        {"type": "full-import", "agent": "hr"},
        {"type": "full-sync", "agent": "ad"},
        {"type": "full-sync", "agent": "hr"},
        {"type": "export", "agent": "ad"},
        {"type": "delta-import", "agent": "ad"},
        {"type": "delta-sync", "agent": "ad"},
    ]
    config = config_from_dict(
        {
            "store": {"url": "sqlite:///mvsync.db"},
            "data_dir": "data",
            "agents": {
                "ad": {
                    "type": AD_SNAPSHOT_TYPE,
                    "settings": {"snapshot": str(snapshot), "ldif_output": str(root / "changes.ldif")},
                    "projection": [{"object_class": "user"}],
                    "import_flow": [{"object_class": "user", "cs": "sAMAccountName", "mv": "accountName"}],
                    "export_flow": [
                        {
                            "object_class": "user",
                            "mv": "photo",
                            "cs": "thumbnailPhoto",
                            "transform": "thumbnail(size=96, max_bytes=10240)",
                        }
                    ],
                },
                "hr": {
                    "type": "photo-folder",
                    "settings": {"path": str(folder), "verify_images": False},
                    "join": [{"object_class": "photoFile", "match": [{"cs": "accountName", "mv": "accountName"}]}],
                    "import_flow": [{"object_class": "photoFile", "cs": "photo", "mv": "photo"}],
                },
            },
            "run_profiles": {"Cycle": {"steps": steps}},
        },
        base_dir=root,
    )
    return config, snapshot


def hashlib_uuid(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"mvsync-hostile:{name}"))


def hostile_images(root: Path) -> dict[str, Any]:
    """Odd images through the export transform path: each a thumbnail or a per-object error.

    Returns per image: ``thumbnail`` (a valid <= 10 KB 96x96 JPEG reached the directory) or the
    per-object error names it got; and the run's status (never a connector exception).
    """
    import io

    from PIL import Image

    from connector.demo import read_ldif
    from connector.engine import Engine

    images = odd_images()
    config, snapshot = _hostile_world(root, images)
    engine = Engine(config)
    try:
        result = engine.run_profile("Cycle")
        again = engine.run_profile("Cycle")
    finally:
        engine.close()
    errors: dict[str, set[str]] = {}
    for step in result.steps:
        for err in step.errors:
            errors.setdefault(str(err.anchor), set()).add(f"{step.kind}:{err.error_name}")
    directory = {str(e["sAMAccountName"]): e for e in read_ldif(snapshot)}
    guid_to_sam = {hashlib_uuid(sam): sam for sam in directory}
    by_sam: dict[str, set[str]] = {}
    for anchor, names in errors.items():
        sam = guid_to_sam.get(anchor, anchor.split(" ")[0])
        by_sam.setdefault(sam, set()).update(names)
    outcomes: dict[str, str] = {}
    bad_thumbnails = []
    for i, name in enumerate(sorted(images)):
        sam = f"img{i:03d}"
        data = directory[sam].get("thumbnailPhoto")
        if data:
            with Image.open(io.BytesIO(data)) as im:  # small sources are kept small, never upscaled
                ok = im.format == "JPEG" and im.width == im.height <= 96 and len(data) <= 10_240
            outcomes[name] = "thumbnail" if ok else "bad-thumbnail"
            if not ok:
                bad_thumbnails.append(name)
        else:
            outcomes[name] = ",".join(sorted(by_sam.get(sam, set()))) or "nothing (no error!)"
    return {
        "tried": len(images),
        "status": result.status,
        "statuses": [s.status for s in result.steps],
        "second_run_status": again.status,
        "outcomes": outcomes,
        "unexplained": sorted(n for n, o in outcomes.items() if o.startswith("nothing")),
        "bad_thumbnails": bad_thumbnails,
    }


#: File names a photo folder may hold: dots, unicode, control characters, direction overrides.
ODD_FILE_NAMES = (
    "..jpg",
    "...jpg",
    "a..b.jpg",
    ".. x.jpg",
    "\u00fcn\u00efc\u00f8d\u00e9 \u00c6r\u00f8sk\u00f8bing.jpg",
    "\u65e5\u672c\u8a9e.jpg",
    "tab\there.jpg",
    "new\nline.jpg",
    "esc\x1b[31mred.jpg",
    "del\x7f.jpg",
    "rtl\u202egpj.exe.jpg",
    "star*(paren)\\back.jpg",
)


def hostile_file_names(root: Path) -> dict[str, Any]:
    """A full import of a folder of oddly named files (and a symlink out of it): per-file outcomes."""
    from connector.config import config_from_dict
    from connector.engine import Engine
    from connector.store import loads

    folder = root / "odd-names"
    folder.mkdir(parents=True)
    photo = odd_images()["plain-jpeg"]
    for name in ODD_FILE_NAMES:
        (folder / name).write_bytes(photo)
    outside = root / "outside.jpg"
    outside.write_bytes(odd_images()["png-alpha"])
    (folder / "escape.jpg").symlink_to(Path("..") / "outside.jpg")
    config = config_from_dict(
        {
            "store": {"url": "sqlite:///mvsync.db"},
            "agents": {"hr": {"type": "photo-folder", "settings": {"path": str(folder)}}},
            "run_profiles": {"Import": {"steps": [{"type": "full-import", "agent": "hr"}]}},
        },
        base_dir=root,
    )
    engine = Engine(config)
    try:
        result = engine.run_profile("Import")
        from connector.store import ConnectorSpace

        with engine.store.read() as conn:
            staged = [
                loads(r.pending, "cs_object", r.id, "pending")
                for r in ConnectorSpace(conn).objects("hr")
                if r.pending is not None
            ]
    finally:
        engine.close()
    step = result.steps[0]
    outside_sum = hashlib.sha256(outside.read_bytes()).hexdigest()
    return {
        "tried": len(ODD_FILE_NAMES) + 1,
        "status": result.status,
        "imported": len(staged),
        "errors": step.error_count,
        "warnings": step.warning_count,
        "error_names": dict(Counter(e.error_name for e in step.errors)),
        "read_outside_folder": any(doc.get("photoChecksum") == outside_sum for doc in staged),
        # names starting with a dot are hidden files, which the agent skips by design
        "hidden": sum(1 for name in ODD_FILE_NAMES if name.startswith(".")),
        "accounts": sorted(str(doc.get("accountName")) for doc in staged),
    }


def hostile_configs(root: Path) -> dict[str, Any]:
    """Configuration files with unknown keys and wrong types: each a ConfigError naming key and file."""
    from connector.config import ConfigError, load_config
    from connector.demo import dump_toml
    from connector.engine import Engine

    base: dict[str, Any] = {
        "store": {"url": "sqlite:///mvsync.db"},
        "agents": {"hr": {"type": "photo-folder", "settings": {"path": str(root)}}},
        "run_profiles": {"Import": {"steps": [{"type": "full-import", "agent": "hr"}]}},
    }
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "unknown top-level key": ({**base, "stroe": {"url": "x"}}, "stroe"),
        "unknown agent key": (
            {**base, "agents": {"hr": {**base["agents"]["hr"], "projektion": []}}},
            "agents.hr.projektion",
        ),
        "unknown setting": (
            {**base, "agents": {"hr": {"type": "photo-folder", "settings": {"path": str(root), "recursiv": True}}}},
            "agents.hr.settings.recursiv",
        ),
        "wrong setting type": (
            {**base, "agents": {"hr": {"type": "photo-folder", "settings": {"path": str(root), "recursive": "maybe"}}}},
            "agents.hr.settings.recursive",
        ),
        "wrong step type": (
            {
                **base,
                "run_profiles": {"Import": {"steps": [{"type": "full-import", "agent": "hr", "page_size": "big"}]}},
            },
            "run_profiles.Import.steps[0].page_size",
        ),
        "unknown step kind": (
            {**base, "run_profiles": {"Import": {"steps": [{"type": "fullimport", "agent": "hr"}]}}},
            "run_profiles.Import.steps[0].type",
        ),
        "inline secret": (
            {
                **base,
                "agents": {
                    **base["agents"],
                    "ad": {
                        "type": "active-directory",
                        "settings": {"host": "dc", "bind_dn": "x", "password": "hunter2", "base_dns": ["DC=x"]},
                    },
                },
                "run_profiles": {"Import": {"steps": [{"type": "full-import", "agent": "ad"}]}},
            },
            "agents.ad.settings.password",
        ),
        "wrong type in list": ({**base, "metaverse": {"precedence": {"photo": "hr"}}}, "metaverse.precedence.photo"),
    }
    root.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, str] = {}
    for name, (data, key) in cases.items():
        path = root / f"{name.replace(' ', '-')}.toml"
        path.write_text(dump_toml(data), encoding="utf-8")
        try:
            engine = Engine(load_config(path))
            try:
                engine.run_profile("Import")
            finally:
                engine.close()
            outcomes[name] = "accepted (!)"
        except ConfigError as exc:
            text = str(exc)
            outcomes[name] = "clear" if str(path) in text and key in text else f"unclear: {text[:300]}"
        except Exception as exc:  # the point of the check: anything else is a crash
            outcomes[name] = f"crash: {type(exc).__name__}: {exc}"[:300]
    return {"tried": len(cases), "outcomes": outcomes}


def hostile_inputs(root: Path) -> dict[str, Any]:
    """The offline hostile-input checks (images, file names, configurations) as benchmark figures.

    The Graph and LDAP cases need a stub server or a DC and live in tests/resilience/test_hostile.py.
    """
    images = hostile_images(root / "images")
    names = hostile_file_names(root / "names")
    configs = hostile_configs(root / "configs")
    crashes = sum(1 for status in (images["status"], names["status"]) if status.startswith("stopped-")) + sum(
        1 for o in configs["outcomes"].values() if o != "clear"
    )
    return {
        "tried": images["tried"] + names["tried"] + configs["tried"],
        "images": {"tried": images["tried"], "outcomes": dict(Counter(images["outcomes"].values()))},
        "file_names": {k: names[k] for k in ("tried", "status", "imported", "errors", "hidden", "read_outside_folder")},
        "configs": configs,
        "unclear_or_crashed": crashes + len(images["unexplained"]) + len(images["bad_thumbnails"]),
        "objects_lost": len(images["unexplained"]) + len(images["bad_thumbnails"]),
    }


def crash_trials(root: Path, *, trials: int, seed: int, ad: Any = None, users: int = 24) -> dict[str, Any]:
    """``trials`` kill -9 trials (phases in turn) against a fresh tenant; the summary figures."""
    from connector.emulator import GraphEmulator

    crash = _crash()

    with GraphEmulator(crash.lab_emulator_config(users=users, seed=seed)) as emu:
        lab = crash.CrashLab(root, emu, ad=ad)
        try:
            summary: dict[str, Any] = lab.run_trials(trials, seed).as_dict()
            return summary
        finally:
            lab.cleanup()


RESTART_HOST = "127.0.83.9"


class RestartableDC:
    """A DC of its own on another loopback address, which may be stopped and started at will.

    The shared test DC serves other tests and sessions, so stopping it would break them; this one
    comes from the same harness (provisioned once per machine, ~35 s; later starts take ~3 s).
    """

    def __init__(self, settings: Any, directory: Path) -> None:
        self.settings = settings
        self.directory = directory

    def stop(self) -> None:
        _samba().stop_samba(self.directory, host=RESTART_HOST)

    def start(self) -> None:
        _samba().ensure_samba(self.directory, host=RESTART_HOST, use_env=False)


@contextlib.contextmanager
def restartable_dc() -> Iterator[RestartableDC]:
    """Lease the restartable DC (raises ``SambaUnavailable`` where Samba cannot run); left running-
    or-stopped as it was found.

    The lease is exclusive: the DC is per machine, and two sessions stopping and starting it at the
    same time (two test runs in two checkouts) pull it from under each other's export.
    """
    samba_lease = _samba().samba_lease
    directory = Path(tempfile.gettempdir()) / f"mvsync-samba-{RESTART_HOST}"
    with samba_lease(directory, host=RESTART_HOST, use_env=False, exclusive=True) as settings:
        dc = RestartableDC(settings, directory)
        try:
            yield dc
        finally:
            dc.start()  # running again, so the lease stops it cleanly


def run(trials: int = 20, seed: int = 1, *, samba: bool = True) -> dict[str, Any]:
    """Everything, with one JSON-able result (``mvsync bench resilience``)."""
    dc_harness = _samba() if samba else None
    started = time.monotonic()
    out: dict[str, Any] = {"benchmark": "resilience", "trials_requested": trials, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="mvsync-bench-resilience-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        ad: Any = None
        if dc_harness is not None:
            try:
                ad = stack.enter_context(dc_harness.samba_lease())
                out["directory"] = "samba" + (" (AD_* directory)" if ad.external else " (harness DC)")
            except dc_harness.SambaUnavailable as exc:
                out["directory"] = f"ldif-snapshot stand-in: Samba unavailable ({exc})"
        else:
            out["directory"] = "ldif-snapshot stand-in (--no-samba)"
        faults = exo_import_under_faults(root / "faults", users=200, seed=13)
        restart: dict[str, Any] | str = "skipped: needs the Samba harness (not AD_*)"
        if ad is not None and not ad.external:
            with restartable_dc() as dc:
                restart = export_across_dc_restart(root / "restart", dc.settings, stop=dc.stop, restart=dc.start)
        crashes = crash_trials(root / "crashes", trials=trials, seed=seed, ad=ad)
        hostile = hostile_inputs(root / "hostile")
    injected = faults["faulted"]["faults_injected"]
    out["faults"] = {
        "injected_by_kind": injected,
        "injected": sum(injected.values()),
        "survived": sum(injected.values()) if faults["identical"] else 0,
        "token_lifetime_s": faults["token_lifetime_s"],
        "token_requests": faults["faulted"]["token_requests"],
        "photos": faults["photos"],
        "checksums_identical": faults["identical"],
        "objects_lost": faults["objects_missing"] + faults["checksums_different"],
        "seconds": faults["seconds"],
    }
    out["dc_restart"] = restart
    out["crashes"] = crashes
    out["hostile"] = hostile
    restart_lost = restart["staged_exports"] - restart["photos_in_directory"] if isinstance(restart, dict) else 0
    out["objects_lost"] = (
        out["faults"]["objects_lost"] + crashes["photos_lost"] + hostile["objects_lost"] + restart_lost
    )
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def _crash() -> Any:
    """The kill -9 harness (``tests/harness/crash.py``): test machinery, from a source checkout only."""
    from connector.bench._harness import harness

    return harness("crash", benchmark="resilience")


def _samba() -> Any:
    """The Samba DC harness (``tests/harness/samba_dc.py``): test machinery, from a source checkout only."""
    from connector.bench._harness import harness

    return harness("samba_dc", benchmark="resilience")
