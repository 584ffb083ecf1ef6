"""``outpost``: every desktop operation, headless. Each command takes --workspace and --json."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from runtimes.errors import OutpostError

Handler = Callable[[argparse.Namespace], Any]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("outpost")
    except PackageNotFoundError:
        return "0+unknown"


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="workspace folder (default: $OUTPOST_WORKSPACE or the user data dir)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return p


def _open_ws(args: argparse.Namespace) -> Any:
    from desktop_app.core.workspace import Workspace, default_workspace_dir

    return Workspace.open(args.workspace or default_workspace_dir())


def _say(args: argparse.Namespace, text: str) -> None:
    """Human progress: stdout normally, stderr under --json so stdout stays one JSON document."""
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [
        [
            (
                ""
                if r.get(c) is None
                else f"{r[c]:.3f}"
                if isinstance(r.get(c), float)
                else str(r[c])
            )
            for c in columns
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# --- workspace ---------------------------------------------------------------------------


def cmd_workspace_init(args: argparse.Namespace) -> Any:
    ws = _open_ws(args)
    return {"workspace": str(ws.root), "database": str(ws.root / "outpost.db")}


def cmd_workspace_check(args: argparse.Namespace) -> Any:
    ws = _open_ws(args)
    report = ws.check()
    result = {"ok": report.ok, "problems": report.problems, "counts": report.counts}
    if not report.ok:
        args.exit_code = 1
    return result


def cmd_workspace_backup(args: argparse.Namespace) -> Any:
    ws = _open_ws(args)
    dest = ws.backup(args.out)
    return {"backup": str(dest)}


# --- datasets ----------------------------------------------------------------------------


class _FormatChoices(Sequence[str]):
    """``--format`` choices from the FORMATS table, loaded on first use (keeps --help fast)."""

    def __init__(self, auto: bool) -> None:
        self._auto = auto
        self._keys: list[str] | None = None

    def _load(self) -> list[str]:
        if self._keys is None:
            from desktop_app.core.formats import FORMATS

            self._keys = (["auto"] if self._auto else []) + sorted(FORMATS)
        return self._keys

    def __contains__(self, value: object) -> bool:
        return value in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, index: Any) -> Any:
        return self._load()[index]


def cmd_dataset_sample(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import write_sample_dataset

    summary = write_sample_dataset(args.out, seed=args.seed, count=args.count, size=args.size)
    return (
        summary
        if isinstance(summary, dict)
        else getattr(summary, "__dict__", {"out": str(args.out)})
    )


def cmd_dataset_analyze(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import analyze_dataset

    report = analyze_dataset(args.path, args.format)
    if not report["ok"]:
        args.exit_code = 1
    if args.json:
        return report
    task = f" ({report['task']})" if report["task"] else ""
    lines = [
        f"{report['path']}: {report['format'] or 'unknown format'}{task}, {report['images']} images, "
        f"{report['annotations']} annotations, {len(report['classes'])} classes",
    ]
    lines += [f"  {name:<20} {n}" for name, n in report["annotations_per_class"].items()]
    if report["splits"]:
        lines.append("  splits: " + ", ".join(f"{k}={v}" for k, v in report["splits"].items()))
    lines += [f"problem: {p}" for p in report["problems"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    if len(report["problems"]) > 1:
        lines.append(f"{len(report['problems'])} problems; `dataset import --lenient` skips them")
    return "\n".join(lines)


def cmd_dataset_import(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import import_dataset

    ws = _open_ws(args)
    return import_dataset(
        ws,
        args.path,
        args.name,
        args.format,
        val_fraction=args.val_fraction,
        seed=args.seed,
        lenient=args.lenient,
    )


def cmd_dataset_qa(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import qa_report, split_ref

    name, version = split_ref(args.ref)
    report = qa_report(
        _open_ws(args),
        name,
        version,
        tiny_px=args.tiny_px,
        duplicate_iou=args.duplicate_iou,
        deep=args.deep,
    )
    if not report["ok"]:
        args.exit_code = 1
    if args.json:
        return report
    lines = [
        f"{report['dataset']}@{report['version']}: {report['images']} images, "
        f"{report['annotations']} annotations; {report['errors']} errors, "
        f"{report['warnings']} warnings, {report['infos']} notes"
    ]
    for f in report["findings"]:
        lines.append(f"{f['severity']}: {f['count']} {f['title']}")
        for ex in f["examples"][:5]:
            where = ex["file_name"] or ""
            if ex["annotation"] is not None:
                where += f" #{ex['annotation']}"
            lines.append(f"    {where + ': ' if where else ''}{ex['detail']}")
        if f["count"] > 5:
            lines.append(f"    ... and {f['count'] - 5} more (see --json)")
    if not report["findings"]:
        lines.append("no findings")
    return "\n".join(lines)


def cmd_dataset_export(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import export_dataset

    return export_dataset(_open_ws(args), args.ref, args.format, args.out, as_zip=args.zip)


def cmd_dataset_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import list_datasets

    return list_datasets(_open_ws(args))


def cmd_dataset_show(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import dataset_summary

    return dataset_summary(_open_ws(args), args.name)


def cmd_dataset_versions(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import list_versions

    rows = list_versions(_open_ws(args), args.name)
    if args.json:
        return rows
    for r in rows:
        r["splits"] = "/".join(str(r["splits"].get(k, 0)) for k in ("train", "val", "test"))
        r["content_hash"] = r["content_hash"][:12]
        r["tags"] = ",".join(r.get("tags") or [])
        if r.get("draft"):
            r["version"] = "draft*"
            r["message"] = r.get("message") or "unsaved changes"
    return _table(
        rows,
        [
            "version",
            "created_at",
            "images",
            "annotations",
            "splits",
            "content_hash",
            "origin",
            "tags",
            "message",
        ],
    )


def cmd_dataset_validate(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import split_ref, validate_dataset

    name, version = split_ref(args.ref)
    report = validate_dataset(_open_ws(args), name, version)
    if not report["ok"]:
        args.exit_code = 1
    if args.json:
        return report
    lines = [
        f"{', '.join(report['versions'])}: {report['images']} images, {report['blobs']} stored "
        f"files checked, {report['missing']} missing, {report['corrupt']} corrupt"
    ]
    lines += [
        f"problem: {p['version']} {p['file_name']}: {p['problem']}" for p in report["problems"]
    ]
    return "\n".join(lines)


def cmd_dataset_duplicates(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import find_duplicates

    report = find_duplicates(_open_ws(args))
    if args.json:
        return report
    lines = [f"identical datasets: {len(report['identical_datasets'])}"]
    lines += [
        f"  {d['content_hash'][:12]}  {', '.join(d['versions'])}"
        for d in report["identical_datasets"]
    ]
    lines.append(f"duplicate images: {len(report['duplicate_images'])}")
    for d in report["duplicate_images"]:
        where = ", ".join(f"{loc['version']}:{loc['file_name']}" for loc in d["locations"])
        lines.append(f"  {d['sha256'][:12]}  {where}")
    return "\n".join(lines)


def cmd_dataset_stats(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import dataset_stats, split_ref

    name, version = split_ref(args.ref)
    st = dataset_stats(_open_ws(args), name, version)
    if args.json:
        return st
    sizes = st["box_sizes"]
    lines = [
        f"{st['dataset']}@{st['version']}: {st['images']} images, {st['annotations']} annotations, "
        f"labelled {st['labelled_images']}/{st['images']} ({st['labelled_ratio']:.1%})",
        f"  box sizes: small={sizes['small']} medium={sizes['medium']} large={sizes['large']}",
        f"  on disk: {st['size_bytes']} bytes in {st['unique_images']} stored images",
    ]
    status = st["label_status"]
    lines.insert(
        1,
        f"  label status: labelled={status.get('labelled', 0)} "
        f"unlabelled={status.get('unlabelled', 0)} needs_review={status.get('needs_review', 0)}"
        f"  last change: {st['last_change']}",
    )
    lines += [f"  {name:<20} {n}" for name, n in st["annotations_per_class"].items()]
    hist = st["box_area_histogram"]
    lines.append("  box area (share of the image):")
    for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"], strict=False):
        lines.append(f"    {lo:8.4%} - {hi:8.4%}  {n}")
    runs = ", ".join(r["id"] for r in st["training_runs"]) or "none"
    lines.append(f"  training runs: {runs}")
    used = st["versions_used_by_runs"]
    if used:
        lines.append(
            "  runs per version: " + "; ".join(f"{v}: {', '.join(ids)}" for v, ids in used.items())
        )
    return "\n".join(lines)


# --- dataset versions, tags, diffs, restores and splits ------------------------------------


def cmd_dataset_snapshot(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import snapshot

    r = snapshot(_open_ws(args), args.name, message=args.message)
    if args.json:
        return r
    if r["created"]:
        return f"{r['dataset']}@{r['version']} created from the draft: {r['images']} images, {r['annotations']} annotations"
    return f"{r['dataset']}@{r['version']} reused: the draft has not changed since that version"


def cmd_dataset_tag(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import split_ref, tag_version

    name, version = split_ref(args.ref)
    if version is None:
        raise OutpostError(f"name the version to tag: {args.ref}@v2")
    r = tag_version(_open_ws(args), name, version, args.tag)
    if args.json:
        return r
    moved = f" (moved from {r['moved_from']})" if r["moved_from"] else ""
    return f"{r['dataset']}@{r['tag']} -> {r['version']}{moved}"


def cmd_dataset_untag(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import untag

    r = untag(_open_ws(args), args.name, args.tag)
    return r if args.json else f"removed tag {r['tag']} (was {r['dataset']}@{r['version']})"


def cmd_dataset_diff(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import diff_versions

    d = diff_versions(_open_ws(args), args.name, args.a, args.b)
    if args.json:
        return d
    img, ann, spl = d["images"], d["annotations"], d["splits"]
    lines = [
        f"{d['dataset']}: {d['a']} -> {d['b']}" + ("  (identical)" if d["identical"] else ""),
        f"  images: +{img['added']} -{img['removed']} ~{img['changed']} (new image data)",
        f"  annotations: +{ann['added']} -{ann['removed']} ~{ann['changed']} "
        f"in {ann['images']} images",
        f"  split moves: {spl['moved']}  ({d['a']} "
        + "/".join(str(spl["a"][k]) for k in ("train", "val", "test"))
        + f", {d['b']} "
        + "/".join(str(spl["b"][k]) for k in ("train", "val", "test"))
        + " train/val/test)",
        f"  label status changes: {d['label_status']['changed']}",
    ]
    if d["classes"]["added"] or d["classes"]["removed"]:
        lines.append(
            f"  classes: +{', '.join(d['classes']['added']) or '-'} "
            f"-{', '.join(d['classes']['removed']) or '-'}"
        )
    for cls, c in d["class_counts"].items():
        if c["delta"]:
            lines.append(f"  {cls:<20} {c['a']} -> {c['b']} ({c['delta']:+d})")
    for kind in ("added", "removed", "changed"):
        for fn in img["examples"][kind]:
            lines.append(f"  image {kind}: {fn}")
    for e in ann["examples"]:
        lines.append(
            f"  {e['file_name']}: +{e['added']} -{e['removed']} ~{e['changed']} annotations"
        )
    for m in spl["examples"]:
        lines.append(f"  {m['file_name']}: {m['from']} -> {m['to']}")
    return "\n".join(lines)


def cmd_dataset_restore(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import restore_version, split_ref

    name, version = split_ref(args.ref)
    if version is None:
        raise OutpostError(f"name the version to restore: {args.ref}@v1")
    r = restore_version(_open_ws(args), name, version)
    if args.json:
        return r
    saved = f"; the previous draft was saved as {r['auto_saved']}" if r["auto_saved"] else ""
    return (
        f"the draft of {r['dataset']} is now a copy of {r['restored']} "
        f"({r['draft']['images']} images){saved}; edit history cleared"
    )


def _split_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The split setting the flags of ``dataset split`` ask for (only the keys given)."""
    out: dict[str, Any] = {}
    for key, value in (
        ("method", args.method),
        ("val", args.val),
        ("test", args.test),
        ("seed", args.seed),
    ):
        if value is not None:
            out[key] = value
    assignments: dict[str, str] = {}
    if args.assignments is not None:
        try:
            loaded = json.loads(Path(args.assignments).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise OutpostError(
                f"cannot read split assignments from {args.assignments}: {exc}; "
                'write a JSON object such as {"img_001.jpg": "val"}'
            ) from None
        if not isinstance(loaded, dict):
            raise OutpostError(
                f"{args.assignments} must hold a JSON object mapping file names to splits"
            )
        assignments.update({str(k): str(v) for k, v in loaded.items()})
    for item in args.assign or []:
        file_name, sep, split = item.rpartition("=")
        if not sep or not file_name:
            raise OutpostError(f"--assign expects FILE=SPLIT, got {item!r}")
        assignments[file_name] = split
    if assignments:
        out["assignments"] = assignments
    return out


def cmd_dataset_split(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import set_split, split_settings

    ws = _open_ws(args)
    current = split_settings(ws, args.name)
    if args.show:
        r = current
    else:
        settings = {**current["settings"], **_split_flags(args)}
        if settings["method"] == "auto":
            settings["assignments"] = {}
        r = {**set_split(ws, args.name, settings), "level": "dataset"}
    if args.json:
        return r
    st = r["settings"]
    counts = "/".join(str(r["splits"][k]) for k in ("train", "val", "test"))
    lines = [
        f"{r['dataset']}@{r['version']}: {counts} train/val/test"
        + (f", {r['moved']} images moved" if "moved" in r else f" (split: {r['split_method']})"),
        f"  setting ({r['level']}): method={st['method']} val={st['val']} test={st['test']} "
        f"seed={st['seed']} assignments={len(st['assignments'])}",
    ]
    return "\n".join(lines)


def _add_version_parsers(ds: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(ds, "snapshot", cmd_dataset_snapshot, "save the draft as the next version")
    p.add_argument("name")
    p.add_argument("-m", "--message", default=None, help="what changed")
    p = add(ds, "tag", cmd_dataset_tag, "name a version (moves the tag if it exists)")
    p.add_argument("ref", metavar="NAME@VERSION")
    p.add_argument("tag", help="letters, digits, '.', '_' or '-' (e.g. stable)")
    p = add(ds, "untag", cmd_dataset_untag, "remove a tag")
    p.add_argument("name")
    p.add_argument("tag")
    p = add(ds, "diff", cmd_dataset_diff, "what changed between two versions (A to B)")
    p.add_argument("name")
    p.add_argument("a", metavar="A", help="v1, a tag, or draft")
    p.add_argument("b", metavar="B", nargs="?", default="draft", help="default: draft")
    p = add(ds, "restore", cmd_dataset_restore, "make the draft a copy of a version")
    p.add_argument("ref", metavar="NAME@VERSION")
    p = add(ds, "split", cmd_dataset_split, "set the dataset's split and apply it to the draft")
    p.add_argument("name")
    p.add_argument("--method", choices=("auto", "manual", "partial"), default=None)
    p.add_argument("--val", type=float, default=None, help="val fraction (default 0.2)")
    p.add_argument("--test", type=float, default=None, help="test fraction (default 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the draw (default 42)")
    p.add_argument(
        "--assign", action="append", metavar="FILE=SPLIT", help="one image's split (repeatable)"
    )
    p.add_argument(
        "--assignments", type=Path, default=None, help='JSON file {"file_name": "val", ...}'
    )
    p.add_argument("--show", action="store_true", help="show the setting and split; change nothing")


# --- dataset editing, classes and pre-labelling -------------------------------------------


def _item_text(item: dict[str, Any]) -> str:
    head = (
        f"{item['file_name']}  {item['width']}x{item['height']}  {item['split']}  "
        f"{item['label_status']}  {len(item['annotations'])} annotations"
    )
    lines = [head]
    for a in item["annotations"]:
        box = " ".join(f"{v:.1f}" for v in a["xyxy"])
        score = f"  score {a['score']:.3f}" if a["score"] is not None else ""
        lines.append(f"  [{a['index']}] {a['class_name']:<16} {box}{score}")
    return "\n".join(lines)


def _edit_entry_text(verb: str, entry: dict[str, Any]) -> str:
    return f"{verb}: {entry['summary']}"


def cmd_dataset_items(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import list_items, split_ref

    name, version = split_ref(args.ref)
    items = list_items(
        _open_ws(args),
        name,
        version,
        status=args.status,
        class_name=args.class_name,
        split=args.split,
        offset=args.offset,
        limit=args.limit,
    )
    if args.json:
        return items
    rows = [
        {
            "file_name": i["file_name"],
            "size": f"{i['width']}x{i['height']}",
            "split": i["split"],
            "status": i["label_status"],
            "annotations": len(i["annotations"]),
        }
        for i in items
    ]
    return _table(rows, ["file_name", "size", "split", "status", "annotations"])


def cmd_dataset_label(args: argparse.Namespace) -> Any:
    from desktop_app.core import datasets as d

    ws, name, fn = _open_ws(args), args.name, args.file
    if args.add:
        cls, *coords = args.add
        item = d.add_box(ws, name, fn, cls, [_number(v, "--add") for v in coords])
    elif args.delete is not None:
        item = d.delete_annotation(ws, name, fn, args.delete)
    elif args.move:
        index, dx, dy = args.move
        item = d.move_box(
            ws, name, fn, _index(index, "--move"), _number(dx, "--move"), _number(dy, "--move")
        )
    elif args.resize:
        index, *coords = args.resize
        item = d.update_box(
            ws, name, fn, _index(index, "--resize"), [_number(v, "--resize") for v in coords]
        )
    elif args.set_class:
        index, cls = args.set_class
        item = d.set_annotation_class(ws, name, fn, _index(index, "--set-class"), cls)
    elif args.image_class:
        item = d.set_image_class(ws, name, fn, args.image_class)
    else:
        item = d.set_label_status(ws, name, [fn], args.status)[0]
    return item if args.json else _item_text(item)


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise OutpostError(f"{flag} expects numbers, got {text!r}") from None


def _index(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise OutpostError(f"{flag} expects an annotation index first, got {text!r}") from None


def cmd_dataset_undo(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import undo

    entry = undo(_open_ws(args), args.name)
    return entry if args.json else _edit_entry_text("undone", entry)


def cmd_dataset_redo(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import redo

    entry = redo(_open_ws(args), args.name)
    return entry if args.json else _edit_entry_text("redone", entry)


def cmd_dataset_history(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import history

    entries = history(_open_ws(args), args.name, limit=args.limit)
    if args.json:
        return entries
    rows = [dict(e, state="undone" if e["undone"] else "") for e in entries]
    return _table(rows, ["id", "created_at", "op", "summary", "state"])


def cmd_dataset_classes(args: argparse.Namespace) -> Any:
    from desktop_app.core import datasets as d

    ws, name, names = _open_ws(args), args.name, args.names
    wanted = {None: 0, "add": 1, "rename": 2, "merge": None, "delete": 1}[args.action]
    if (wanted is not None and len(names) != wanted) or (args.action == "merge" and not names):
        usage = {
            None: "classes NAME",
            "add": "classes NAME add CLASS",
            "rename": "classes NAME rename OLD NEW",
            "merge": "classes NAME merge A [B ...] --into C",
            "delete": "classes NAME delete CLASS [--remap-to OTHER]",
        }[args.action]
        raise OutpostError(f"usage: outpost dataset {usage}")
    if args.action != "merge" and args.into is not None:
        raise OutpostError("--into belongs to `classes NAME merge A B --into C`")
    if args.action != "delete" and args.remap_to is not None:
        raise OutpostError("--remap-to belongs to `classes NAME delete CLASS --remap-to OTHER`")
    if args.action is None:
        classes = d.list_classes(ws, name)
    elif args.action == "add":
        classes = d.add_class(ws, name, names[0])
    elif args.action == "rename":
        classes = d.rename_class(ws, name, names[0], names[1])
    elif args.action == "merge":
        if args.into is None:
            raise OutpostError("name the class to merge into with --into C")
        classes = d.merge_classes(ws, name, names, args.into)
    else:
        classes = d.delete_class(ws, name, names[0], remap_to=args.remap_to)
    return classes if args.json else _table(classes, ["id", "name", "annotations", "images"])


def cmd_dataset_add_images(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import add_images

    out = add_images(_open_ws(args), args.name, args.paths, split=args.split)
    if args.json:
        return out
    lines = [f"added {out['added']} unlabelled images to {out['dataset']} (draft)"]
    lines += [
        f"  {d['file_name']} has the same content as {d['same_as']}" for d in out["duplicates"]
    ]
    return "\n".join(lines)


def cmd_dataset_prelabel(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import prelabel

    out = prelabel(
        _open_ws(args),
        args.name,
        export_id=args.export,
        package=args.package,
        conf=args.conf,
        iou=args.iou,
        only_status=args.status or ("unlabelled",),
        limit=args.limit,
        add_missing_classes=args.add_missing_classes,
        progress=None if args.json else lambda _stage, i, n: _say(args, f"  {i}/{n}"),
    )
    if args.json:
        return out
    lines = [
        f"{out['images']} images pre-labelled: {out['proposals']} proposals, "
        f"{out['empty_images']} images without any; now needs_review"
    ]
    lines += [
        f"  skipped {n} detections of model class {c!r}" for c, n in out["skipped_classes"].items()
    ]
    if out["added_classes"]:
        lines.append(f"  added classes: {', '.join(out['added_classes'])}")
    return "\n".join(lines)


def cmd_dataset_review(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import accept_all, review

    ws = _open_ws(args)
    if args.accept_all:
        out = accept_all(ws, args.name, min_score=args.min_score)
        if args.json:
            return out
        return f"accepted {out['accepted']} images; {out['left']} still need review"
    if args.min_score != 0.0:
        raise OutpostError("--min-score goes with --accept-all")
    item = review(ws, args.name, args.accept or args.reject, accept=args.accept is not None)
    return item if args.json else _item_text(item)


def _add_edit_parsers(ds: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """The `dataset` subcommands that read and edit a dataset's draft."""
    statuses = ["labelled", "unlabelled", "needs_review"]
    p = add(ds, "items", cmd_dataset_items, "list the images of a version (the draft by default)")
    p.add_argument("ref", metavar="NAME[@VERSION]", help="@draft (default) or @v2")
    p.add_argument("--status", choices=statuses, default=None)
    p.add_argument("--class", dest="class_name", default=None, help="images with this class")
    p.add_argument("--split", choices=["train", "val", "test"], default=None)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)

    p = add(ds, "label", cmd_dataset_label, "edit one image's annotations in the draft")
    p.add_argument("name")
    p.add_argument("file", help="the image's file name (see `dataset items`)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--add", nargs=5, metavar=("CLASS", "X0", "Y0", "X1", "Y1"), help="add a box")
    g.add_argument("--delete", type=int, metavar="INDEX", help="delete annotation INDEX")
    g.add_argument("--move", nargs=3, metavar=("INDEX", "DX", "DY"), help="shift a box (pixels)")
    g.add_argument(
        "--resize", nargs=5, metavar=("INDEX", "X0", "Y0", "X1", "Y1"), help="new box corners"
    )
    g.add_argument("--set-class", nargs=2, metavar=("INDEX", "CLASS"), help="change a class")
    g.add_argument("--image-class", metavar="CLASS", help="classification: the image's class")
    g.add_argument("--status", choices=statuses, help="set the image's label status")

    for cmd, handler, text in (
        ("undo", cmd_dataset_undo, "undo the latest edit of the dataset's draft"),
        ("redo", cmd_dataset_redo, "redo the edit undone last"),
    ):
        p = add(ds, cmd, handler, text)
        p.add_argument("name")
    p = add(ds, "history", cmd_dataset_history, "the draft's edit history, newest first")
    p.add_argument("name")
    p.add_argument("--limit", type=int, default=50)

    p = add(ds, "classes", cmd_dataset_classes, "list, add, rename, merge or delete classes")
    p.add_argument("name")
    p.add_argument("action", nargs="?", choices=["add", "rename", "merge", "delete"])
    p.add_argument("names", nargs="*", metavar="CLASS")
    p.add_argument("--into", default=None, help="merge: the class the others become")
    p.add_argument("--remap-to", default=None, help="delete: move its annotations to this class")

    p = add(ds, "add-images", cmd_dataset_add_images, "add unlabelled images to the draft")
    p.add_argument("name")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="a folder or image files")
    p.add_argument("--split", choices=["train", "val", "test"], default=None)

    p = add(ds, "prelabel", cmd_dataset_prelabel, "propose boxes with an exported model")
    p.add_argument("name")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--export", default=None, metavar="ID", help="an export id, or latest")
    g.add_argument("--package", type=Path, default=None, help="a .outpost.zip or package folder")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--limit", type=int, default=None, help="at most this many images")
    p.add_argument(
        "--status", action="append", choices=statuses, help="images to predict (unlabelled)"
    )
    p.add_argument("--add-missing-classes", action="store_true")

    p = add(ds, "review", cmd_dataset_review, "accept or reject pre-labelling proposals")
    p.add_argument("name")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--accept-all", action="store_true", help="every image whose proposals pass")
    g.add_argument("--accept", metavar="FILE", help="accept one image's proposals")
    g.add_argument("--reject", metavar="FILE", help="reject one image's proposals")
    p.add_argument("--min-score", type=float, default=0.0, help="with --accept-all")


# --- training ----------------------------------------------------------------------------


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as JSON when they can be (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OutpostError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def cmd_train(args: argparse.Namespace) -> Any:
    from desktop_app.core.dataset_split import parse_split_arg
    from desktop_app.core.training import TrainOptions, run_training, submit_training

    if args.schema:
        from trainers.registry import default_registry

        return default_registry().get(args.schema).schema().to_json()
    if not args.dataset:
        raise OutpostError(
            "name the dataset to train on with --dataset NAME; see outpost dataset list"
        )
    ws = _open_ws(args)
    opts = TrainOptions(
        dataset=args.dataset,
        preset=args.preset,
        framework=args.framework,
        version=args.version,
        model=args.model,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workers=args.workers,
        seed=args.seed,
        extra=_parse_sets(args.set),
        split=parse_split_arg(args.split) if args.split else None,
        experiment=args.experiment,
    )
    if args.detach:
        return _detached(args, ws, submit_training(ws, opts))
    summary = run_training(ws, opts, on_event=_train_progress(args))
    return _train_result(args, summary)


def _detached(args: argparse.Namespace, ws: Any, submitted: dict[str, str]) -> Any:
    """Queue done: make sure a background worker runs the job; say how to follow it."""
    from desktop_app.core.jobs import spawn_worker

    worker = spawn_worker(ws)
    if args.json:
        return {**submitted, "worker_pid": worker}
    return (
        f"job {submitted['job']} queued for run {submitted['run']}"
        f"{f' (worker pid {worker} started)' if worker else ' (the running worker takes it)'}; "
        f"follow it with: outpost jobs logs {submitted['job']} --follow"
    )


def _train_progress(args: argparse.Namespace) -> Callable[[dict[str, Any]], None]:
    def progress(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "train_start":
            _say(
                args,
                f"training on {event.get('device')} ({event.get('threads')} threads), {event.get('epochs')} epochs",
            )
        elif kind == "epoch_end":
            m = event.get("metrics") or {}
            shown = "  ".join(
                f"{label}={m[key]:.4f}"
                for label, key in (
                    ("box_loss", "train/box_loss"),
                    ("cls_loss", "train/cls_loss"),
                    ("P", "metrics/precision(B)"),
                    ("R", "metrics/recall(B)"),
                    ("mAP50", "metrics/mAP50(B)"),
                    ("mAP50-95", "metrics/mAP50-95(B)"),
                )
                if m.get(key) is not None
            )
            _say(args, f"epoch {event['epoch']}/{event['epochs']}  {shown}")

    return progress


def _train_result(args: argparse.Namespace, summary: dict[str, Any]) -> Any:
    if args.json:
        return {
            k: summary[k]
            for k in (
                "id",
                "status",
                "final_metrics",
                "best_checkpoint",
                "mlflow_run_id",
                "device",
                "run_dir",
            )
        }
    m = summary["final_metrics"]
    return f"run {summary['id']} completed: mAP50={m.get('metrics/mAP50(B)', 0):.4f}  best={summary['best_checkpoint']}"


def cmd_models_list(args: argparse.Namespace) -> Any:
    from trainers.registry import default_registry

    search = (args.search or "").lower()
    frameworks = []
    rows = []
    for plugin in default_registry().plugins():
        if args.framework and plugin.key != args.framework:
            continue
        archs = plugin.architectures()
        if args.task:
            archs = {n: t for n, t in archs.items() if t == args.task}
        frameworks.append(
            {
                "framework": plugin.key,
                "title": plugin.title,
                "tasks": ",".join(plugin.tasks),
                "architectures": len(archs),
            }
        )
        # A framework with more than a few hundred architectures (timm) lists them only
        # when asked for by name or filtered with --search.
        if len(archs) > 300 and not search and args.framework != plugin.key:
            continue
        for name, task in archs.items():
            if search and search not in name.lower():
                continue
            rows.append(
                {
                    "framework": plugin.key,
                    "task": task,
                    "model": name,
                    "trainable": task in plugin.tasks,
                }
            )
    if args.json:
        return {"frameworks": frameworks, "models": rows}
    hidden = [
        f
        for f in frameworks
        if f["architectures"] > 300 and not search and args.framework != f["framework"]
    ]
    lines = [
        _table(frameworks, ["framework", "title", "tasks", "architectures"]),
        "",
        _table(rows, ["framework", "task", "model", "trainable"]),
    ]
    for f in hidden:
        lines.append(
            f"({f['architectures']} {f['framework']} architectures not shown; "
            f"filter them with --search TEXT or list them with --framework {f['framework']})"
        )
    return "\n".join(lines)


def cmd_runs_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.training import list_runs

    rows = list_runs(_open_ws(args))
    return (
        rows
        if args.json
        else _table(
            rows, ["id", "status", "model", "epochs", "imgsz", "mAP50", "mAP50-95", "created_at"]
        )
    )


def cmd_runs_show(args: argparse.Namespace) -> Any:
    from desktop_app.core.training import resolve_run, run_summary

    ws = _open_ws(args)
    return run_summary(ws, resolve_run(ws, args.run).id)


def cmd_runs_resume(args: argparse.Namespace) -> Any:
    from desktop_app.core.training import resume_run, wait_resumed

    ws = _open_ws(args)
    job_id = resume_run(ws, args.run)
    if args.detach:
        return _detached(args, ws, {"job": job_id, "run": args.run})
    return _train_result(args, wait_resumed(ws, job_id, on_event=_train_progress(args)))


def cmd_jobs_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.jobs import list_jobs

    rows = []
    for job in list_jobs(_open_ws(args), args.status):
        row = job.to_dict()
        p = job.progress
        row["epoch"] = f"{p['epoch']}/{p.get('epochs')}" if p.get("epoch") else None
        if job.kind == "export":  # its run is in its spec; its progress counts formats
            row["run_id"] = job.spec.get("run_id")
            row["epoch"] = f"{p.get('formats_done', 0)}/{p.get('formats_total', '?')} formats"
        row["eta_s"] = p.get("eta_s")
        rows.append(row)
    if args.json:
        return rows
    return _table(
        rows, ["id", "kind", "status", "resource", "run_id", "epoch", "eta_s", "created_at"]
    )


def cmd_jobs_show(args: argparse.Namespace) -> Any:
    from desktop_app.core.jobs import get_job

    return get_job(_open_ws(args), args.job).to_dict()


def cmd_jobs_cancel(args: argparse.Namespace) -> Any:
    from desktop_app.core.jobs import JobManager

    with JobManager(_open_ws(args)) as manager:
        job = manager.cancel(args.job, grace_s=args.grace)
    return job.to_dict() if args.json else f"job {job.id}: {job.status}"


def cmd_jobs_logs(args: argparse.Namespace) -> Any:
    from desktop_app.core.jobs import follow_logs, job_logs

    ws = _open_ws(args)
    if args.follow and not args.json:
        job = follow_logs(ws, args.job, sys.stdout, tail=args.tail)
        args.exit_code = 0 if job.status == "completed" else 1
        return None
    logs = job_logs(ws, args.job, tail=args.tail)
    return logs if args.json else "\n".join(logs["lines"])


def cmd_jobs_work(args: argparse.Namespace) -> Any:
    from desktop_app.core.jobs import JobManager, worker_lock

    ws = _open_ws(args)
    lock = worker_lock(ws)
    if not lock.acquire():
        return (
            {"ended": 0, "note": "a worker already runs"} if args.json else "a worker already runs"
        )
    try:
        with JobManager(ws) as manager:
            ended = manager.work(until_idle=args.until_idle)
    finally:
        lock.release()
    return {"ended": ended} if args.json else f"worker done: {ended} job(s) ended"


# --- export / predict --------------------------------------------------------------------


def _export_setup(args: argparse.Namespace) -> Any:
    """`outpost export setup [litert|coreml] [--force]`: build an exporter's isolated toolchain."""
    from exporters.toolenv import TOOLCHAINS, ToolEnv

    if not args.toolchain:
        rows = [ToolEnv.for_name(name).status() for name in TOOLCHAINS]
        return rows if args.json else _table(rows, ["toolchain", "ready", "size_mb", "path"])
    env = ToolEnv.for_name(args.toolchain)
    record = env.setup(force=args.force, echo=None if args.json else print)
    return {**env.status(), "record": record} if args.json else ""


def cmd_export(args: argparse.Namespace) -> Any:
    if args.run == "setup":
        return _export_setup(args)
    if args.capabilities:
        from exporters.registry import default_registry
        from exporters.toolenv import FORMAT_TOOLCHAINS

        caps = [_with_pairs(c.__dict__, not args.json) for c in default_registry().capabilities()]
        for cap in caps:
            if cap["key"] in FORMAT_TOOLCHAINS:
                cap["toolchain"] = FORMAT_TOOLCHAINS[cap["key"]]
        if args.json:
            return caps
        rows = [
            {k: ", ".join(v) if isinstance(v, tuple) else v for k, v in c.items()} for c in caps
        ]
        for row in rows:
            if row.get("toolchain"):
                row["needs"] += (
                    f", toolchain {row['toolchain']} (outpost export setup {row['toolchain']})"
                )
        return _table(
            rows, ["key", "title", "frameworks", "tasks", "precisions", "runtime", "needs"]
        )
    if not args.run:
        raise OutpostError("name the run to export (or 'latest'); see outpost runs list")
    if args.toolchain:
        raise OutpostError(f"unexpected argument {args.toolchain!r}; pass formats with --format")
    from desktop_app.core.exports import export_run

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if getattr(args, "for_tensorrt", False):  # ship ONNX; the device builds the engine
        formats = ["onnx-tensorrt" + f[4:] if f.split(":")[0] == "onnx" else f for f in formats]
    precision = "int8" if getattr(args, "int8", False) else args.precision
    if getattr(args, "detach", False):
        from desktop_app.core.export_jobs import submit_export

        ws = _open_ws(args)
        job = submit_export(
            ws,
            args.run,
            formats,
            imgsz=args.imgsz,
            precision=precision,
            bundle=getattr(args, "bundle_formats", False),
        )
        return _detached(args, ws, {"job": job.id, "run": str(job.spec["run_id"])})
    results = export_run(
        _open_ws(args),
        args.run,
        formats,
        imgsz=args.imgsz,
        precision=precision,
        bundle=getattr(args, "bundle_formats", False),
    )
    if any(r["status"] != "completed" for r in results):
        args.exit_code = 1
    if args.json:
        return results
    for r in results:
        parts = r.get("formats") or [r]
        r["parity"] = "; ".join(
            (f"{p['format']}: " if len(parts) > 1 else "") + _parity_text(p.get("validation") or {})
            for p in parts
        )
        if len(parts) > 1:
            r["format"] = "+".join(p["format"] for p in parts)
    return _table(results, ["id", "format", "precision", "status", "parity", "package", "error"])


def _parity_text(v: dict[str, Any]) -> str:
    """One export's parity numbers in a few words (a classifier's: top-1 and probabilities)."""
    if not v:
        return ""
    if v.get("top1_agreement") is not None:
        return f"top-1 {v['top1_agreement']:.3f} agree, prob {v['max_prob_deviation']:.4f}"
    return (
        f"{v['matched']}/{max(v['reference_detections'], v['export_detections'])} matched, "
        f"box {v['max_box_deviation_px']:.2f} px, score {v['max_score_deviation']:.4f}"
    )


def _with_pairs(cap: dict[str, Any], text: bool) -> dict[str, Any]:
    """A capability record plus the ``framework/task`` pairs it really supports (timm models
    are classifiers only); for the text table, its frameworks column says so."""
    from exporters.formats.timm_common import FRAMEWORK_TASKS, capability_matrix
    from exporters.registry import default_registry

    record = next(c for c in default_registry().capabilities() if c.key == cap["key"])
    pairs = [f"{p['framework']}/{p['task']}" for p in capability_matrix(record)]
    if not text:
        return {**cap, "pairs": pairs}
    return {
        **cap,
        "frameworks": tuple(
            f"{fw} ({', '.join(FRAMEWORK_TASKS[fw])} only)" if fw in FRAMEWORK_TASKS else fw
            for fw in cap["frameworks"]
        ),
    }


def cmd_exports_wrappers(args: argparse.Namespace) -> Any:
    from exporters.wrappers import export_wrappers

    written = export_wrappers(args.package, args.out)
    files = {name: str(path) for name, path in written.items()}
    return files if args.json else "\n".join(files.values())


def cmd_exports_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.exports import list_exports

    rows = list_exports(_open_ws(args), run=args.run)
    if args.json:
        return rows
    for r in rows:
        r["default"] = "*" if r["default"] else ""
        acc = r.get("accuracy") or {}
        r["accuracy"] = f"{acc['export']:.3f} ({acc['metric']})" if "export" in acc else ""
        lat = r.get("latency") or {}
        r["p50_ms"] = lat.get("p50_ms", "")
    columns = ["id", "run_id", "format", "precision", "status", "default", "accuracy", "p50_ms"]
    return _table(rows, [*columns, "package"])


def cmd_exports_default(args: argparse.Namespace) -> Any:
    from desktop_app.core.exports import set_default_export

    row = set_default_export(_open_ws(args), args.export)
    return row if args.json else f"export {row['id']} is now the default of run {row['run_id']}"


def cmd_exports_delete(args: argparse.Namespace) -> Any:
    from desktop_app.core.exports import delete_export

    result = delete_export(_open_ws(args), args.export, force=args.force)
    return result if args.json else f"deleted export {result['id']}"


def _predict_format(args: argparse.Namespace) -> str | None:
    """``--format``, or else the package format whose own runtime is ``--runtime`` (a package
    holding ONNX and OpenVINO runs its OpenVINO IR under ``--runtime openvino``)."""
    fmt: str | None = getattr(args, "format", None)
    if fmt or not args.runtime:
        return fmt
    from runtimes.package import PackageReader, read_manifest_dir

    path = Path(args.package)
    if path.is_dir():
        manifest = read_manifest_dir(path)
    elif path.is_file():
        with PackageReader(path) as reader:
            manifest = reader.manifest
    else:
        return None  # the predictor names the missing file
    native = [f.key for f in manifest.all_formats() if f.runtime == args.runtime]
    return native[0] if native and len(manifest.all_formats()) > 1 else None


def cmd_predict(args: argparse.Namespace) -> Any:
    from runtimes.allocator import keep_large_buffers
    from runtimes.predictor import Predictor
    from runtimes.preprocess import read_image

    keep_large_buffers()
    predictor = Predictor.from_path(
        args.package,
        runtime=args.runtime,
        format_key=_predict_format(args),
        provider=getattr(args, "provider", None),
    )
    fallback = predictor.fallback
    if fallback is not None:  # never silent: the timings are not the wanted provider's
        print(
            f"WARNING: {fallback['wanted']} does not run this model here; running on "
            f"{fallback['using']} ({fallback['reason']})",
            file=sys.stderr,
        )
    try:
        results = []
        for image in args.images:
            dets, timing = predictor.predict(read_image(image), conf=args.conf, iou=args.iou)
            item: dict[str, Any] = {
                "image": str(image),
                "detections": dets.to_list(),
                "timing_ms": timing.as_dict(),
            }
            if dets.probs is not None:
                item["classification"] = dets.top_k(predictor.manifest.model.postprocessing.top_k)
            results.append(item)
    finally:
        predictor.close()
    if args.json:
        return {
            "package": str(args.package),
            "runtime": predictor.backend.key,
            "providers": predictor.backend.active_providers,
            "fallback": fallback,
            "results": results,
        }
    lines = []
    for r in results:
        if "classification" in r:
            lines.append(f"{r['image']}: ({r['timing_ms']['total']:.1f} ms)")
            for c in r["classification"]:
                lines.append(f"  {c['class_name']:<12} {c['confidence']:.3f}")
            continue
        lines.append(
            f"{r['image']}: {len(r['detections'])} detections ({r['timing_ms']['total']:.1f} ms)"
        )
        for d in r["detections"]:
            extra = ""
            if "mask" in d:
                extra += f"  mask {_mask_area(d['mask'])} px"
            if "keypoints" in d:
                extra += "  keypoints " + " ".join(
                    f"({k[0]:.0f},{k[1]:.0f})" for k in d["keypoints"]
                )
            lines.append(f"  {d['class_name']:<12} {d['confidence']:.3f}  {d['xyxy']}{extra}")
    return "\n".join(lines)


def _mask_area(rle: dict[str, Any]) -> int:
    """Foreground pixels of a COCO uncompressed RLE (every second run)."""
    return int(sum(rle["counts"][1::2]))


# --- evaluation / batch prediction -------------------------------------------------------


def _progress(args: argparse.Namespace) -> Callable[[str, int, int], None] | None:
    """A "done/total" line every tenth of the way (and at the end), unless --json."""
    if args.json:
        return None

    def say(_stage: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            _say(args, f"  {done}/{total}")

    return say


def _classification_text(ev: dict[str, Any]) -> str:
    m, details = ev["metrics"], ev.get("details") or {}
    what = f"export {ev['export_id']}" if ev["export_id"] else "checkpoint"
    head = (
        f"evaluation {ev['id']}: run {ev['run_id']} ({what}) on "
        f"{ev['dataset']}@{ev['version']} {ev['split']}"
    )
    cols = ["class", "images", "predicted", "precision", "recall", "accuracy"]
    rows = [{c: r[c] for c in cols} for r in ev.get("per_class", [])]
    lines = [head, _table(rows, cols)]
    lines.append(
        f"top-1 {m['top1']:.4f}  top-{m['top_k']} {m['top5']:.4f}  on {m['images']} images"
    )
    lines += [f"warning: {w}" for w in details.get("warnings", [])]
    return "\n".join(lines)


def _evaluation_text(ev: dict[str, Any]) -> str:
    if (ev.get("details") or {}).get("kind") == "classify":
        return _classification_text(ev)
    m = ev["metrics"]
    head = (
        f"evaluation {ev['id']}: run {ev['run_id']} (export {ev['export_id']}) on "
        f"{ev['dataset']}@{ev['version']} {ev['split']}"
    )
    rows = [
        {
            "class": r["class"],
            "images": r["images"],
            "instances": r["instances"],
            "P": r["precision"],
            "R": r["recall"],
            "AP50": r["ap50"],
            "AP50-95": r["ap50_95"],
        }
        for r in ev.get("per_class", [])
    ]
    rows.append(
        {
            "class": "all",
            "images": m["images"],
            "instances": m["instances"],
            "P": m["precision"],
            "R": m["recall"],
            "AP50": m["map50"],
            "AP50-95": m["map50_95"],
        }
    )
    lines = [head, _table(rows, ["class", "images", "instances", "P", "R", "AP50", "AP50-95"])]
    details = ev.get("details") or {}
    lines.append(
        f"P and R at confidence {m['f1_confidence']:.3f} (the best mean F1); "
        f"mAP75 {m['map75'] if m['map75'] is not None else '-'}"
    )
    lines += [f"warning: {w}" for w in details.get("warnings", [])]
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import split_ref
    from desktop_app.core.evaluation import evaluate

    name, version = split_ref(args.dataset)
    ev = evaluate(
        _open_ws(args),
        args.run,
        name,
        version,
        args.split,
        export_id=args.export,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        progress=_progress(args),
    )
    return ev if args.json else _evaluation_text(ev)


def cmd_evaluations_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.evaluation import list_evaluations

    rows = list_evaluations(_open_ws(args), args.run)
    if args.json:
        return rows
    flat = [
        {
            **r,
            "mAP50": r["metrics"].get("map50"),
            "mAP50-95": r["metrics"].get("map50_95"),
            "top-1": r["metrics"].get("top1"),
        }
        for r in rows
    ]
    columns = ["id", "run_id", "export_id", "dataset", "version", "split", "status"]
    return _table(flat, [*columns, "mAP50", "mAP50-95", "top-1", "created_at"])


def cmd_evaluations_show(args: argparse.Namespace) -> Any:
    from desktop_app.core.evaluation import get_evaluation

    ev = get_evaluation(_open_ws(args), args.id)
    return ev if args.json else _evaluation_text(ev)


def cmd_predict_batch(args: argparse.Namespace) -> Any:
    from desktop_app.core.datasets import split_ref
    from desktop_app.core.predictions import predict_batch, to_prelabels

    if args.run is None and args.export is None:
        raise OutpostError("name a run (or 'latest') or pass --export ID to predict with")
    name, version = split_ref(args.dataset) if args.dataset else (None, None)
    ws = _open_ws(args)
    out = predict_batch(
        ws,
        run_ref=args.run,
        export_id=args.export,
        folder=args.folder,
        dataset=name,
        version=version,
        split=args.split,
        conf=args.conf,
        iou=args.iou,
        progress=_progress(args),
    )
    if args.to_prelabels:
        out["prelabels"] = to_prelabels(ws, out["id"], args.to_prelabels, min_score=args.min_score)
    if args.json:
        return out
    lines = [
        f"prediction set {out['id']}: {out['images']} images, {out['detections']} detections "
        f"from {out['source']} -> {out['path']}"
    ]
    lines += [f"  error: {e['file']}: {e['error']}" for e in out["errors"]]
    pre = out.get("prelabels")
    if pre is not None:
        lines.append(
            f"pre-labelled {pre['images']} images of {pre['dataset']} (draft): "
            f"{pre['proposals']} proposals, now needs_review; {len(pre['unmatched'])} "
            f"predicted images not in the dataset"
        )
    return "\n".join(lines)


def cmd_predictions_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.predictions import list_prediction_sets

    rows = list_prediction_sets(_open_ws(args))
    if args.json:
        return rows
    columns = ["id", "run_id", "export_id", "source", "images", "detections", "errors"]
    return _table(rows, [*columns, "created_at"])


def cmd_predictions_show(args: argparse.Namespace) -> Any:
    from desktop_app.core.predictions import get_prediction_set

    out = get_prediction_set(_open_ws(args), args.id, limit=args.limit)
    if args.json:
        return out
    lines = [
        f"prediction set {out['id']}: {out['images']} images, {out['detections']} detections "
        f"from {out['source']} ({out['path']})"
    ]
    for rec in out["images_shown"]:
        lines.append(f"{rec['file']}: {len(rec['detections'])} detections")
        for d in rec["detections"]:
            lines.append(f"  {d['class']:<12} {d['score']:.3f}  {d['xyxy']}")
    return "\n".join(lines)


def _add_evaluation_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """`evaluate`, `evaluations`, `predict-batch` and `predictions`."""
    p = add(sub, "evaluate", cmd_evaluate, "measure a run's exported model on a dataset split")
    p.add_argument("run", help="run id or 'latest'")
    p.add_argument("--dataset", required=True, metavar="NAME[@VERSION]")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--export", default=None, help="export id (default: the run's newest ONNX)")
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold (0.001)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (0.7)")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (300)")
    evs = sub.add_parser("evaluations", help="stored evaluations").add_subparsers(
        dest="sub", required=True
    )
    p = add(evs, "list", cmd_evaluations_list, "list evaluations")
    p.add_argument("--run", default=None, help="only this run's (id or 'latest')")
    p = add(evs, "show", cmd_evaluations_show, "one evaluation with its per-class table")
    p.add_argument("id")

    p = add(
        sub,
        "predict-batch",
        cmd_predict_batch,
        "predict a folder or a dataset version with a run's export and store the results",
    )
    p.add_argument("run", nargs="?", default=None, help="run id or 'latest' (or use --export)")
    p.add_argument("--export", default=None, help="export id (default: the run's newest ONNX)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", type=Path, default=None, help="a folder of images (recursive)")
    src.add_argument("--dataset", default=None, metavar="NAME[@VERSION]")
    p.add_argument("--split", default=None, choices=["train", "val", "test"])
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument(
        "--to-prelabels",
        default=None,
        metavar="DATASET",
        help="store the detections as proposals on that dataset's unlabelled draft images",
    )
    p.add_argument(
        "--min-score", type=float, default=0.25, help="weakest proposal kept (--to-prelabels)"
    )
    preds = sub.add_parser("predictions", help="stored prediction sets").add_subparsers(
        dest="sub", required=True
    )
    add(preds, "list", cmd_predictions_list, "list prediction sets")
    p = add(preds, "show", cmd_predictions_show, "one prediction set and its first images")
    p.add_argument("id")
    p.add_argument("--limit", type=int, default=20, help="images to show (20)")


# --- devices -----------------------------------------------------------------------------


def cmd_devices_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import discover, list_devices

    ws = _open_ws(args)
    if args.known:
        rows = list_devices(ws)
    else:
        rows = discover(ws, args.interface, timeout=args.timeout)
        if not rows:
            where = ", ".join(args.interface) if args.interface else "any interface"
            print(
                f"no agent answered on {where} within {args.timeout:g} s; is outpost-agent "
                "serve running there? Where mDNS does not reach (another subnet, a VPN): "
                "outpost devices add HOST:PORT",
                file=sys.stderr,
            )
    return (
        rows
        if args.json
        else _table(
            rows,
            ["id", "name", "address", "port", "platform", "arch", "version", "paired"]
            + (["last_seen"] if args.known else []),  # a device gone since shows its age
        )
    )


def cmd_devices_add(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import add_device

    d = add_device(_open_ws(args), args.address, timeout=args.timeout)
    if args.json:
        return d
    where = f"{d['name']} ({d['id']}) at {d['address']}:{d['port']}, agent {d['version'] or '?'}"
    if d["paired"]:
        return f"{where}: recorded; already paired"
    return (
        f"{where}: recorded; its key {d['fingerprint']}\n"
        f"next: run outpost-agent pair on it, then: outpost devices pair {d['id']} --code NNNNNN"
    )


def cmd_devices_pair(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import pair

    result = pair(_open_ws(args), args.device, args.code, args.interface)
    return (
        result
        if args.json
        else f"paired with {result['name']} ({result['device']}); its key {result['fingerprint']} is pinned"
    )


def cmd_devices_forget(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import forget

    result = forget(_open_ws(args), args.device)
    if result["warning"]:
        print(f"warning: {result['warning']}", file=sys.stderr, flush=True)
    if args.json:
        return result
    if not result["was_paired"]:
        return f"{result['name']} ({result['device']}) was not paired; nothing to forget"
    told = (
        "the device had already dropped this desktop's key"
        if result.get("agent_had_forgotten")
        else "the device dropped this desktop's key"
        if result["agent_revoked"]
        else "the device was not told (see the warning)"
    )
    return f"forgot {result['name']} ({result['device']}): its pin is removed; {told}"


# --- packaging: offline bundles and the managed training environment ----------------------


def cmd_bundle(args: argparse.Namespace) -> Any:
    from desktop_app.core.bundle import PACKAGE_SUFFIX, BundleSpec, build_bundle

    ref = str(args.export)
    if ref.endswith(PACKAGE_SUFFIX) and Path(ref).is_file():
        package = Path(ref)
    else:
        from desktop_app.core.exports import get_export

        ws = _open_ws(args)
        exp = get_export(ws, ref)
        if not exp.package_path:
            raise OutpostError(f"export {exp.id} has no package; export the run again")
        package = Path(ws.resolve(exp.package_path))
    spec = BundleSpec(
        package=package,
        target=args.target,
        python=args.python,
        out=args.out,
        wheels_from=args.wheels_from,
        outpost_wheel=args.outpost_wheel,
    )
    r = build_bundle(spec, progress=lambda m: _say(args, m))
    if args.json:
        return r
    return (
        f"{r['bundle']}: {r['model']} {r['model_version']} + outpost-agent {r['agent_version']} "
        f"for {r['target']} (Python {r['python']}), {r['wheels']} wheels, "
        f"{r['size_bytes'] / (1 << 20):.1f} MiB\non the device: {r['install']}"
    )


def cmd_env_setup(args: argparse.Namespace) -> Any:
    from desktop_app.core.training_env import setup_env

    r = setup_env(args.name, wheel=args.wheel, say=lambda m: _say(args, m))
    return r if args.json else f"{r['name']} environment ready: {r['python']} ({r['app_version']})"


def cmd_env_status(args: argparse.Namespace) -> Any:
    from desktop_app.core.training_env import env_status

    r = env_status(args.name)
    if args.json:
        return r
    state = "ready" if r["ready"] else f"not ready (installed: {r['installed_version'] or 'none'})"
    return f"{r['name']}: {state}; {r['path']}"


def _add_packaging_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        sub,
        "bundle",
        cmd_bundle,
        "an offline bundle: the agent, its wheels for a device and a model, in one archive "
        "(downloads the wheels now)",
    )
    p.add_argument("export", help="export id, 'latest', or a .outpost.zip file")
    p.add_argument(
        "--target", required=True, choices=["linux-aarch64", "linux-x86_64", "macos-arm64"]
    )
    p.add_argument(
        "--python",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="the device's Python (default: this one's)",
    )
    p.add_argument("--out", type=Path, required=True, help="the archive to write (.tar.gz)")
    p.add_argument(
        "--wheels-from",
        type=Path,
        default=None,
        help="resolve wheels from this folder only (no index; e.g. a prepared wheelhouse)",
    )
    p.add_argument(
        "--outpost-wheel", type=Path, default=None, help="ship this outpost wheel (default: built)"
    )
    env = sub.add_parser(
        "env", help="managed Python environments (training in the desktop app)"
    ).add_subparsers(dest="sub", required=True)
    for name, handler, text in (
        ("setup", cmd_env_setup, "create or upgrade it (downloads torch and Ultralytics once)"),
        ("status", cmd_env_status, "where it is and whether it matches this app's version"),
    ):
        p = add(env, name, handler, text)
        p.add_argument("name", nargs="?", default="training", choices=["training"])
        if name == "setup":
            p.add_argument("--wheel", type=Path, default=None, help="the outpost wheel to install")


def cmd_deploy(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import deploy

    args.interrupt_hint = (
        "the device serves what it did before unless it had the whole package already "
        f"(outpost devices show {args.device} tells); run the same deploy again"
    )
    progress = TransferProgress(sys.stderr, "sent")
    try:
        result = deploy(
            _open_ws(args),
            args.export,
            args.device,
            args.interface,
            activate=args.activate,
            provider=args.provider,
            on_progress=progress if progress.shown else None,
        )
    finally:
        progress.end()
    fallback = result.get("fallback")
    said = _warn_fallback(result["device"], fallback)
    for warning in result.get("warnings") or []:
        if not any(warning.startswith(f"wanted {wanted}") for wanted in said):
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    if args.json:
        return result
    verb = "deployed" if result["activated"] else "staged (not serving; outpost devices activate)"
    return (
        f"{verb} {result['model']} ({result['export']}) to {result['device']}"
        f"{_running_on(result['installed'])}"
    )


def _warn_fallback(device: str, fallback: Any) -> list[str]:
    """Never silent: a device that does not run a model on what was wanted says so (one
    fallback, or a list of them); what was wanted, for each."""
    wanted = []
    for item in fallback if isinstance(fallback, list) else [fallback]:
        if isinstance(item, dict) and item:
            wanted.append(str(item.get("wanted")))
            print(
                f"WARNING: {device} wanted {item.get('wanted')} but uses "
                f"{item.get('using')}: {item.get('reason')}",
                file=sys.stderr,
                flush=True,
            )
    return wanted


def _running_on(answer: dict[str, Any]) -> str:
    """``": onnx on onnxruntime (CPUExecutionProvider)"`` from an agent's model answer."""
    if not answer.get("format"):
        return ""
    providers = ", ".join(str(p) for p in answer.get("providers") or [])
    runtime = f" on {answer['runtime']}" if answer.get("runtime") else ""
    return f": {answer['format']}{runtime}" + (f" ({providers})" if providers else "")


def cmd_devices_model(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import model_action

    result = model_action(
        _open_ws(args),
        args.device,
        args.model,
        args.action,
        version=getattr(args, "version", None),
        force=getattr(args, "force", False),
        interfaces=args.interface,
    )
    if not result["recorded"]:
        print(
            f"warning: no export of {args.model} is known here; the {args.action} is not "
            "recorded in the deployment history",
            file=sys.stderr,
            flush=True,
        )
    answer = result["result"]
    if args.action in ("activate", "rollback"):
        _warn_fallback(result["device"], answer.get("fallback"))
    if args.json:
        return result
    version = f" {answer['version']}" if answer.get("version") else ""
    return (
        f"{args.action}: {args.model}{version} on {result['device']} ({result['status']})"
        f"{_running_on(answer) if args.action in ('activate', 'rollback') else ''}"
    )


def cmd_usage(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import usage_report

    # Back-compatible: ``outpost usage --device ID`` always pulled; --no-pull shows stored rows.
    pull = args.pull if args.pull is not None else args.device is not None
    failures: dict[str, str] = {}
    rows = usage_report(
        _open_ws(args), args.device, pull=pull, interfaces=args.interface, failures=failures
    )
    for device, reason in sorted(failures.items()):
        kept = (
            "its last pulled usage is shown"
            if any(r["device"] == device for r in rows)
            else ("nothing was pulled from it before")
        )
        print(f"warning: {reason}; {kept}", file=sys.stderr, flush=True)
    if failures:  # as devices sync: a script sees that the figures may be stale
        args.exit_code = 1
    elif not rows and not args.json:
        print(
            "no usage pulled yet: pair a device, then outpost usage --pull "
            "(or outpost devices sync --watch 60)",
            file=sys.stderr,
            flush=True,
        )
    names = [r["device_name"] for r in {r["device"]: r for r in rows}.values()]
    same_name = len(names) != len(set(names))  # two devices called "raspberrypi"
    return (
        rows
        if args.json
        else _table(
            rows,
            [
                *(["device"] if same_name else []),
                "device_name",
                "model",
                "version",
                "runtime",
                "requests",
                "errors",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "throughput_rps",
            ],
        )
    )


class TransferProgress:
    """``on_progress(done, total)`` for a push, shown on a terminal only (a log or a pipe gets
    nothing): one line, rewritten at most every half second, so a stall shows as a line that
    stops moving rather than as silence."""

    def __init__(self, stream: Any, verb: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.verb, self.clock = stream, verb, clock
        self.shown = bool(getattr(stream, "isatty", lambda: False)())
        self._last = -1.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done < total and now - self._last < 0.5:
            return
        self._last = now
        share = f" ({100 * done / total:.0f} %)" if total else ""
        self.stream.write(f"\r{self.verb} {done / 2**20:.1f} of {total / 2**20:.1f} MiB{share}")
        self.stream.flush()
        self._drawn = True

    def end(self) -> None:
        """Close the line, so what follows starts on its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


MIN_SECONDS, MAX_SECONDS = 0.1, 86_400.0  # a tenth of a second (no busy loop) to a day


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds from :data:`MIN_SECONDS` to :data:`MAX_SECONDS`."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not MIN_SECONDS <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"give a number of seconds above 0 (from {MIN_SECONDS:g} to {MAX_SECONDS:g}), "
            f"not {text!r}"
        )
    return value


def _rounds(text: str) -> int:
    """An argparse type: a whole number of pulls, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a whole number of pulls, 1 or more, not {text!r}")
    return value


def _note_unsynced(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Exit 1 (after the table) when a device could not be pulled, and say so on stderr."""
    failed = [row for row in rows if row.get("error")]
    if failed:
        args.exit_code = 1
        print(
            f"{len(failed)} of {len(rows)} device(s) could not be pulled (see the error column); "
            "their last samples are kept",
            file=sys.stderr,
            flush=True,
        )


def cmd_devices_sync(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import sync_usage

    ws = _open_ws(args)
    columns = ["device_name", "models", "requests", "error"]
    if args.watch is None:
        rows = sync_usage(ws, args.interface)
        _note_unsynced(args, rows)
        return rows if args.json else _table(rows, columns)
    # --json keeps stdout for one document: every round's rows, printed when the watch ends
    # (--rounds, or Ctrl-C); without it each round's table is printed as it comes.
    rounds: list[list[dict[str, Any]]] = []
    try:
        while args.rounds is None or len(rounds) < args.rounds:
            rounds.append(sync_usage(ws, args.interface))
            if not args.json:
                print(_table(rounds[-1], columns), flush=True)
            if args.rounds is None or len(rounds) < args.rounds:
                time.sleep(args.watch)
    except KeyboardInterrupt:
        pass
    if rounds:  # the last round says how the devices stand
        _note_unsynced(args, rounds[-1])
    return rounds if args.json else f"synced {len(rounds)} time(s)"


def cmd_devices_show(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import clock_note, device_detail

    d = device_detail(_open_ws(args), args.device, args.interface)
    if d["warning"]:
        print(f"warning: {d['warning']}", file=sys.stderr, flush=True)
    if args.json:
        return d
    ram = f"{d['ram_bytes'] / (1 << 30):.1f} GiB" if d["ram_bytes"] else "?"
    lines = [
        f"{d['name']} ({d['id']})  {d['address']}:{d['port']}  "
        f"{'paired' if d['paired'] else 'not paired'}  last seen {d['last_seen']}",
        f"system: {d['os'] or d['platform']}  arch {d['arch']}  agent {d['agent_version']}",
        f"cpu: {d['cpu_model'] or '?'} x{d['cpu_count'] or '?'}  ram {ram}",
        *filter(None, [clock_note(d.get("clock_offset_s"))]),
        "accelerators: "
        + (", ".join(str(a.get("name", a.get("kind", "?"))) for a in d["accelerators"]) or "none"),
        "runtimes:",
        _table(
            [
                {
                    "runtime": r.get("key"),
                    "version": r.get("version"),
                    "providers": ",".join(
                        str(p)
                        for p in r.get("available_providers")
                        or r.get("devices")
                        or r.get("providers")
                        or []
                    ),
                }
                for r in d["runtimes"]
            ],
            ["runtime", "version", "providers"],
        ),
        "models:",
        _table(
            [
                {
                    **m,
                    "providers": ",".join(m.get("providers") or []),
                    "fallbacks": json.dumps(m["fallbacks"]) if m.get("fallbacks") else None,
                }
                for m in d["models"]
            ],
            ["name", "version", "format", "runtime", "providers", "previous_version", "fallbacks"],
        ),
        "last usage:",
        _table(
            d["last_usage"], ["model", "requests", "errors", "p50_ms", "p99_ms", "collected_at"]
        ),
    ]
    if d["not_loaded"]:
        lines.append("not served (GET /v1/ready says why):")
        lines += [f"  {name}: {why}" for name, why in d["not_loaded"].items()]
    if d["crashes"]:
        from device_agent.crashguard import crash_line

        lines.append("runtime crashes (on the device: outpost-agent crashes):")
        lines += [f"  {crash_line(c)}" for c in d["crashes"]]
    return "\n".join(lines)


def cmd_deployments_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import list_deployments

    rows = list_deployments(_open_ws(args), args.device)
    return rows if args.json else _deployments_table(rows, ["created_at", "device_name"])


def _deployments_table(rows: list[dict[str, Any]], first: list[str]) -> str:
    """Deployment rows as a table, ``first`` columns first; a fallback as ``wanted -> using``."""
    from desktop_app.core.devices import fallback_summary

    shown = [{**r, "fallback": fallback_summary(r.get("fallback")) or None} for r in rows]
    columns = ["model", "export", "action", "status", "format", "runtime", "fallback", "message"]
    return _table(shown, [*first, *columns])


def cmd_deployments_history(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import deployment_history

    rows = deployment_history(_open_ws(args), args.device, args.model)
    return rows if args.json else _deployments_table(rows, ["created_at"])


def cmd_bench(args: argparse.Namespace) -> Any:
    from desktop_app.core.devices import bench_export, bench_table

    ws = _open_ws(args)
    if args.device:
        done = bench_export(ws, args.export, args.device, args.runs, args.interface)
        _say(args, f"benchmarked {done['model']} on {done['device_name']}: p50 {done['p50_ms']} ms")
    rows = bench_table(ws, args.export)
    return (
        rows
        if args.json
        else _table(
            rows,
            [
                "device_name",
                "model",
                "format",
                "runtime",
                "runs",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "mean_ms",
                "input",
                "created_at",
            ],
        )
    )


# --- experiments and run annotations -----------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def _primary_text(primary: dict[str, Any] | None) -> str:
    return "" if not primary else f"{primary['key']}={primary['value']:.4f}"


def _markdown_arg(args: argparse.Namespace) -> str:
    """The markdown of ``--text`` or ``--file``."""
    if args.file is None:
        return str(args.text)
    try:
        return Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OutpostError(f"cannot read {args.file}: {exc}; pass a UTF-8 text file") from None


def cmd_experiments_create(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import create_experiment

    r = create_experiment(_open_ws(args), args.name, args.description)
    return r if args.json else f"created experiment {r['name']}"


def cmd_experiments_list(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import list_experiments

    rows = list_experiments(_open_ws(args))
    if args.json:
        return rows
    for r in rows:
        best = r["best"]
        r["best"] = f"{_primary_text(best)} ({best['run']})" if best else ""
        first = (r["description"] or "").strip().splitlines()
        r["description"] = first[0] if first else ""
    return _table(rows, ["name", "runs", "best", "created_at", "description"])


def cmd_experiments_show(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import get_experiment

    exp = get_experiment(_open_ws(args), args.name)
    if args.json:
        return exp
    lines = [f"experiment {exp['name']}: {len(exp['runs'])} runs (created {exp['created_at']})"]
    if exp["description"]:
        lines += ["", exp["description"].rstrip(), ""]
    rows = [
        {
            "id": r["id"],
            "status": r["status"],
            "model": r["model"],
            "dataset": f"{r['dataset']}@{r['version']}" if r["dataset"] else "",
            "primary": _primary_text(r["primary_metric"]),
            "star": "*" if r["starred"] else "",
            "tags": ",".join(r["tags"]),
        }
        for r in exp["runs"]
    ]
    lines.append(_table(rows, ["id", "status", "model", "dataset", "primary", "star", "tags"]))
    if exp["best_metrics"]:
        lines.append("best metrics kept (loss: lower is better; mAP, precision, ...: higher):")
        width = max(len(k) for k in exp["best_metrics"])
        lines += [
            f"  {key:<{width}}  {b['value']:.4f}  {b['run']}"
            for key, b in exp["best_metrics"].items()
        ]
    return "\n".join(lines)


def cmd_experiments_add(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import add_runs

    r = add_runs(_open_ws(args), args.name, args.runs, move=args.move)
    if args.json:
        return r
    moved = "".join(f"; moved {run} from {src}" for run, src in r["moved"].items())
    already = f"; already there: {', '.join(r['already'])}" if r["already"] else ""
    return f"added {len(r['added'])} runs to {r['experiment']}{moved}{already}"


def cmd_experiments_remove(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import remove_runs

    r = remove_runs(_open_ws(args), args.name, args.runs)
    return r if args.json else f"removed {', '.join(r['removed'])} from {r['experiment']}"


def cmd_experiments_rename(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import rename_experiment

    r = rename_experiment(_open_ws(args), args.old, args.new)
    return r if args.json else f"renamed experiment {r['renamed_from']} to {r['name']}"


def cmd_experiments_describe(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import describe_experiment

    r = describe_experiment(_open_ws(args), args.name, _markdown_arg(args))
    if args.json:
        return r
    return f"{'set' if r['description'] else 'cleared'} the description of {r['name']}"


def cmd_experiments_delete(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import delete_experiment

    r = delete_experiment(_open_ws(args), args.name)
    if args.json:
        return r
    return f"deleted experiment {r['deleted']}; {len(r['ungrouped_runs'])} runs kept, ungrouped"


def cmd_runs_star(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import star_run

    r = star_run(_open_ws(args), args.run, starred=args.starred)
    return r if args.json else f"{'starred' if r['starred'] else 'unstarred'} {r['run']}"


def cmd_runs_note(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import set_notes

    r = set_notes(_open_ws(args), args.run, _markdown_arg(args))
    return r if args.json else f"{'saved' if r['notes'] else 'cleared'} the notes of {r['run']}"


def cmd_runs_tag(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import add_tags, remove_tags

    ws = _open_ws(args)
    r = remove_tags(ws, args.run, args.tags) if args.remove else add_tags(ws, args.run, args.tags)
    return r if args.json else f"{r['run']} tags: {', '.join(r['tags']) or '(none)'}"


def cmd_runs_search(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import search_runs

    rows = search_runs(
        _open_ws(args),
        text=args.text,
        status=args.status,
        experiment=args.experiment,
        tags=args.tag,
        starred=True if args.starred else None,
        model=args.model,
        framework=args.framework,
        task=args.task,
        dataset=args.dataset,
        metric_filters=args.metric,
        sort=args.sort,
        limit=args.limit,
    )
    if args.json:
        return rows
    for r in rows:
        r["dataset"] = f"{r['dataset']}@{r['version']}" if r["dataset"] else ""
        r["primary"] = _primary_text(r["primary_metric"])
        r["star"] = "*" if r["starred"] else ""
        r["tags"] = ",".join(r["tags"])
        if args.sort and args.sort.lstrip("-") != "created_at":
            r[args.sort.lstrip("-")] = r["final_metrics"].get(args.sort.lstrip("-"))
    columns = ["id", "status", "model", "dataset", "experiment", "star", "tags", "primary"]
    if args.sort and args.sort.lstrip("-") != "created_at":
        columns.append(args.sort.lstrip("-"))
    return _table(rows, [*columns, "created_at"])


def cmd_runs_compare(args: argparse.Namespace) -> Any:
    from desktop_app.core.experiments import compare_runs

    cmp = compare_runs(_open_ws(args), args.runs)
    if args.json:
        return cmp
    ids = [r["id"] for r in cmp["runs"]]
    runs = [
        {
            "run": r["id"],
            "status": r["status"],
            "model": r["model"],
            "task": r["task"],
            "dataset": f"{r['dataset']}@{r['version']}" if r["dataset"] else "",
            "experiment": r["experiment"],
        }
        for r in cmp["runs"]
    ]
    lines = [_table(runs, ["run", "status", "model", "task", "dataset", "experiment"]), ""]
    differing = cmp["params"]["differing"]
    lines.append(f"parameters that differ ({len(differing)}; {len(cmp['params']['shared'])} same):")
    rows = [{"param": k, **{i: _fmt(v.get(i)) for i in ids}} for k, v in differing.items()]
    lines += [_table(rows, ["param", *ids]), ""]
    lines.append("final metrics (* best; loss: lower is better):")
    rows = [
        {
            "metric": key,
            **{i: _fmt(m["values"].get(i)) + ("*" if m["best_run"] == i else "") for i in ids},
        }
        for key, m in cmp["final_metrics"].items()
    ]
    lines += [_table(rows, ["metric", *ids]), ""]
    lines.append("per-epoch metrics: last / best@epoch (full curves with --json):")
    rows = []
    for key, curve in cmp["curves"].items():
        row = {"metric": key}
        for i in ids:
            s = curve["series"].get(i)
            if s is None:
                row[i] = ""
            elif s["best"] is None:
                row[i] = f"{s['last']:.4f}"
            else:
                row[i] = f"{s['last']:.4f} / {s['best']:.4f}@{s['best_epoch']}"
        rows.append(row)
    lines.append(_table(rows, ["metric", *ids]))
    if cmp["validation"] and cmp["validation"]["per_class"]:
        lines += ["", "per-class AP (mAP50-95) from end-of-run validation:"]
        rows = [
            {"class": c, **{i: _fmt((v.get(i) or {}).get("ap")) for i in ids}}
            for c, v in cmp["validation"]["per_class"].items()
        ]
        lines.append(_table(rows, ["class", *ids]))
    return "\n".join(lines)


def _add_experiment_parsers(sub: Any, runs: Any, add: Callable[..., Any]) -> None:
    """``outpost experiments ...`` and the run annotation, search and compare commands."""
    exps = sub.add_parser("experiments", help="groups of runs").add_subparsers(
        dest="sub", required=True
    )
    p = add(exps, "create", cmd_experiments_create, "create an experiment (a group of runs)")
    p.add_argument("name")
    p.add_argument("--description", default=None, metavar="MD", help="markdown description")
    add(exps, "list", cmd_experiments_list, "list experiments with their best primary metric")
    p = add(exps, "show", cmd_experiments_show, "an experiment's runs and best metrics")
    p.add_argument("name")
    p = add(exps, "add", cmd_experiments_add, "put runs into an experiment")
    p.add_argument("name")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run id or 'latest'")
    p.add_argument(
        "--move", action="store_true", help="take runs out of the experiment they are in"
    )
    p = add(exps, "remove", cmd_experiments_remove, "take runs out of an experiment")
    p.add_argument("name")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run id or 'latest'")
    p = add(exps, "rename", cmd_experiments_rename, "rename an experiment")
    p.add_argument("old")
    p.add_argument("new")
    p = add(exps, "describe", cmd_experiments_describe, "set an experiment's markdown description")
    p.add_argument("name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="MD", help="the markdown (empty clears it)")
    src.add_argument("--file", type=Path, metavar="PATH", help="read the markdown from a file")
    p = add(exps, "delete", cmd_experiments_delete, "delete an experiment (its runs are kept)")
    p.add_argument("name")

    p = add(runs, "star", cmd_runs_star, "star a run")
    p.add_argument("run", help="run id or 'latest'")
    p.set_defaults(starred=True)
    p = add(runs, "unstar", cmd_runs_star, "unstar a run")
    p.add_argument("run", help="run id or 'latest'")
    p.set_defaults(starred=False)
    p = add(runs, "note", cmd_runs_note, "set a run's markdown notes (at most 64 KiB)")
    p.add_argument("run", help="run id or 'latest'")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="MD", help="the markdown (empty clears the notes)")
    src.add_argument("--file", type=Path, metavar="PATH", help="read the markdown from a file")
    p = add(runs, "tag", cmd_runs_tag, "add tags to a run (or remove them with --remove)")
    p.add_argument("run", help="run id or 'latest'")
    p.add_argument("tags", nargs="+", metavar="TAG", help="letters, digits and . _ - : /")
    p.add_argument("--remove", action="store_true", help="remove these tags instead")
    p = add(runs, "search", cmd_runs_search, "find runs by text, status, tags, metrics, ...")
    p.add_argument("--text", default=None, help="in the id, model, notes, tags or experiment")
    p.add_argument("--status", default=None, help="queued, running, completed, failed, ...")
    p.add_argument("--experiment", default=None)
    p.add_argument(
        "--tag", action="append", default=None, help="has this tag (repeatable: all of them)"
    )
    p.add_argument("--starred", action="store_true", help="starred runs only")
    p.add_argument("--model", default=None, help="part of the model name")
    p.add_argument("--framework", default=None)
    p.add_argument("--task", default=None, help="detect, segment, classify or pose")
    p.add_argument("--dataset", default=None, metavar="NAME[@VERSION]")
    p.add_argument(
        "--metric",
        action="append",
        default=None,
        metavar="KEY>=V",
        help="a final-metric filter, e.g. 'metrics/mAP50(B)>=0.5' (>, >=, <, <=, =; repeatable)",
    )
    p.add_argument(
        "--sort",
        default=None,
        metavar="KEY",
        help="created_at or a metric key, ascending; --sort=-KEY descending (default: newest first)",
    )
    p.add_argument("--limit", type=int, default=None)
    p = add(
        runs,
        "compare",
        cmd_runs_compare,
        "runs side by side: parameter diff, final metrics, per-epoch curves (--json: full)",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run ids (or 'latest')")


# --- demo / worker -----------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> Any:
    from desktop_app.core.demo import DemoOptions, run_demo

    summary = run_demo(
        DemoOptions(
            workspace=args.workspace,
            epochs=args.epochs,
            imgsz=args.imgsz,
            count=args.count,
            seed=args.seed,
        ),
        say=lambda text: _say(args, text),
    )
    return summary if args.json else None


def cmd_studio(args: argparse.Namespace) -> Any:
    import importlib.util

    if importlib.util.find_spec("PySide6") is None:
        from runtimes.errors import RuntimeUnavailableError

        raise RuntimeUnavailableError("outpost studio needs PySide6: pip install 'outpost[gui]'")
    from desktop_app.ui.app import main as studio_main

    argv = ["--workspace", str(args.workspace)] if args.workspace is not None else []
    args.exit_code = studio_main(argv)
    return None


def cmd_worker(args: argparse.Namespace) -> Any:
    import importlib

    module = importlib.import_module(f"trainers.{args.framework}.cli")
    args.exit_code = module.main(["train", "--spec", str(args.spec)])
    return None


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="outpost", description="Outpost: datasets, training, export and edge deployment."
    )
    from device_agent.protocol_version import LOCAL as _protocols

    parser.add_argument(
        "--version", action="version", version=f"outpost {_version()} (protocol {_protocols})"
    )
    # Also accepted before the command (``outpost --workspace WS dataset list``).
    parser.add_argument("--workspace", dest="global_workspace", type=Path, default=None)
    parser.add_argument("--json", dest="global_json", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(parent: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    ws = sub.add_parser("workspace", help="workspace maintenance").add_subparsers(
        dest="sub", required=True
    )
    add(ws, "init", cmd_workspace_init, "create (or migrate) a workspace")
    add(ws, "check", cmd_workspace_check, "check the database and every stored file")
    p = add(ws, "backup", cmd_workspace_backup, "make a consistent copy of the workspace")
    p.add_argument("--out", type=Path, required=True)

    ds = sub.add_parser("dataset", help="datasets").add_subparsers(dest="sub", required=True)
    p = add(ds, "sample", cmd_dataset_sample, "write a small labelled sample dataset (YOLO layout)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--size", type=int, default=160, help="image width and height in pixels")
    p = add(ds, "import", cmd_dataset_import, "validate a dataset and store it as version v1")
    p.add_argument("path", type=Path)
    p.add_argument(
        "--format",
        default="auto",
        choices=_FormatChoices(auto=True),
        metavar="FORMAT",
        help="%(choices)s (default: auto)",
    )
    p.add_argument("--name", required=True)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip invalid annotations and images (listed in the result and the QA report)",
    )
    p = add(
        ds, "analyze", cmd_dataset_analyze, "detect a dataset's format and report it (no writes)"
    )
    p.add_argument("path", type=Path)
    p.add_argument(
        "--format",
        default="auto",
        choices=_FormatChoices(auto=True),
        metavar="FORMAT",
        help="%(choices)s (default: auto)",
    )
    p = add(
        ds,
        "export",
        cmd_dataset_export,
        "write a dataset version in any format that can hold it (folder or zip)",
    )
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p.add_argument(
        "--format",
        required=True,
        choices=_FormatChoices(auto=False),
        metavar="FORMAT",
        help="%(choices)s",
    )
    p.add_argument("--out", type=Path, required=True, help="a new folder (or zip with --zip)")
    p.add_argument("--zip", action="store_true", help="write one .zip instead of a folder")
    add(ds, "list", cmd_dataset_list, "list datasets")
    p = add(ds, "show", cmd_dataset_show, "show one dataset and its versions")
    p.add_argument("name")
    p = add(ds, "versions", cmd_dataset_versions, "list a dataset's versions")
    p.add_argument("name")
    p = add(ds, "validate", cmd_dataset_validate, "re-check every stored image against its sha256")
    p.add_argument("ref", metavar="NAME[@VERSION]", help="all versions unless @VERSION is given")
    add(ds, "duplicates", cmd_dataset_duplicates, "find identical datasets and duplicate images")
    p = add(ds, "stats", cmd_dataset_stats, "statistics of a dataset version (latest by default)")
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p = add(ds, "qa", cmd_dataset_qa, "QA report of a version; exit 1 on error-level findings")
    p.add_argument("ref", metavar="NAME[@VERSION]", help="latest by default; @draft for the draft")
    p.add_argument("--deep", action="store_true", help="also decode every stored image")
    p.add_argument("--tiny-px", type=float, default=4, help="tiny box: under this many pixels")
    p.add_argument("--duplicate-iou", type=float, default=0.95, help="duplicate box: IoU at least")

    _add_edit_parsers(ds, add)
    _add_version_parsers(ds, add)

    p = add(sub, "train", cmd_train, "train a model on a dataset version")
    p.add_argument("--dataset", default=None, help="dataset name (required unless --schema)")
    p.add_argument(
        "--version",
        default=None,
        help="dataset version or tag (default: the draft, saved as a version first)",
    )
    p.add_argument(
        "--split",
        default=None,
        metavar="val=0.1,test=0.1,seed=7[,method=auto]",
        help="this run's split; wins over the dataset's (a version with it is made or reused)",
    )
    p.add_argument(
        "--model", default="yolo11n.yaml", help="model YAML (from scratch) or weights file"
    )
    p.add_argument("--framework", default="ultralytics", help="trainer (see outpost models list)")
    p.add_argument("--preset", default=None, help="easy, medium or advanced (see --schema)")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's, else 100")
    p.add_argument("--imgsz", type=int, default=None, help="default: the preset's, else 640")
    p.add_argument("--batch", type=int, default=None, help="default: 16")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, or a CUDA index")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--schema",
        metavar="FRAMEWORK",
        default=None,
        help="print the trainer's option schema (types, ranges, groups, presets) as JSON",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any trainer option, e.g. --set mosaic=0.5 --set lr0=0.005 (repeatable)",
    )
    p.add_argument(
        "--experiment", default=None, help="put the run in this experiment (made if new)"
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="queue the run and return; a background worker (outpost jobs work) trains it",
    )

    models = sub.add_parser("models", help="trainers and architectures")
    p = add(
        models.add_subparsers(dest="sub", required=True),
        "list",
        cmd_models_list,
        "list trainers, tasks and architectures",
    )
    p.add_argument(
        "--task", default=None, help="only this task (detect, segment, classify, pose, obb)"
    )
    p.add_argument("--framework", default=None, help="only this trainer (ultralytics, timm)")
    p.add_argument(
        "--search", default=None, metavar="TEXT", help="only architectures whose name contains TEXT"
    )

    runs = sub.add_parser("runs", help="training runs").add_subparsers(dest="sub", required=True)
    add(runs, "list", cmd_runs_list, "list training runs")
    p = add(
        runs,
        "show",
        cmd_runs_show,
        "one run: status, per-epoch metrics, best checkpoint, MLflow id",
    )
    p.add_argument("run", help="run id or 'latest'")
    p = add(
        runs,
        "resume",
        cmd_runs_resume,
        "continue a failed, cancelled or orphaned run from its last checkpoint",
    )
    p.add_argument("run", help="run id")
    p.add_argument("--detach", action="store_true", help="queue it; a background worker runs it")
    _add_experiment_parsers(sub, runs, add)

    jobs = sub.add_parser("jobs", help="the job queue").add_subparsers(dest="sub", required=True)
    p = add(jobs, "list", cmd_jobs_list, "queued, running and finished jobs")
    p.add_argument("--status", default=None, help="only jobs with this status")
    p = add(jobs, "show", cmd_jobs_show, "one job: status, progress, pid, log paths")
    p.add_argument("job")
    p = add(jobs, "cancel", cmd_jobs_cancel, "cancel a job (a running one stops gracefully)")
    p.add_argument("job")
    p.add_argument("--grace", type=float, default=15.0, help="seconds before it is killed")
    p = add(jobs, "logs", cmd_jobs_logs, "a job's log (--follow: with its epochs, to its end)")
    p.add_argument("job")
    p.add_argument("--tail", type=int, default=200, help="last N lines")
    p.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    p = add(jobs, "work", cmd_jobs_work, "run queued jobs: reattach, start, follow (one worker)")
    p.add_argument("--until-idle", action="store_true", help="exit once no job is left")

    p = add(sub, "export", cmd_export, "export a run to edge formats as .outpost.zip packages")
    p.add_argument("run", nargs="?", help="run id or 'latest' (or 'setup' to set up a toolchain)")
    p.add_argument(
        "toolchain", nargs="?", help="with 'setup': litert or coreml (none: list the toolchains)"
    )
    p.add_argument(
        "--force", action="store_true", help="with 'setup': rebuild the toolchain environment"
    )
    p.add_argument(
        "--for-tensorrt",
        action="store_true",
        help="ship ONNX whose manifest asks the device to build a TensorRT engine "
        "(onnx:fp16 = an fp16 engine)",
    )
    p.add_argument(
        "--format",
        default="onnx",
        help="comma-separated formats, each optionally FORMAT:PRECISION (e.g. onnx,openvino:fp16)",
    )
    p.add_argument(
        "--precision", default=None, help="fp32 (default), fp16 or int8, for every format"
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="INT8 (OpenVINO + NNCF, calibrated on the run's training images); as --precision int8",
    )
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the run's)")
    p.add_argument("--capabilities", action="store_true", help="print the format capability matrix")
    p.add_argument(
        "--bundle-formats",
        action="store_true",
        help="write ONE package holding every --format (the first is primary; "
        "`outpost predict --runtime`/`--format` picks one)",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="queue it as an export job (prints the job id); a background worker runs it",
    )
    exports = sub.add_parser("exports", help="exports").add_subparsers(dest="sub", required=True)
    p = add(exports, "list", cmd_exports_list, "list exports (with the default flag)")
    p.add_argument("--run", default=None, help="only this run's exports (id or 'latest')")
    p = add(
        exports,
        "wrappers",
        cmd_exports_wrappers,
        "write a package's runtime wrappers (Python, C++, Swift, Kotlin) to a folder",
    )
    p.add_argument("package", type=Path, help="a .outpost.zip or an extracted package folder")
    p.add_argument("--out", type=Path, required=True, help="folder to write wrappers/ into")
    p = add(exports, "default", cmd_exports_default, "make an export its run's default")
    p.add_argument("export", help="export id")
    p = add(exports, "delete", cmd_exports_delete, "delete an export's package and record")
    p.add_argument("export", help="export id")
    p.add_argument("--force", action="store_true", help="delete even if deployed on a device")
    _add_evaluation_parsers(sub, add)

    p = add(sub, "predict", cmd_predict, "run a package locally on images")
    p.add_argument("package", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--conf", type=float, default=None)
    p.add_argument("--iou", type=float, default=None)
    p.add_argument(
        "--runtime",
        default=None,
        help="runtime backend: onnxruntime, openvino, torchscript, litert, coreml "
        "(default: the best available)",
    )
    p.add_argument(
        "--format",
        default=None,
        help="which format of a multi-format package to run (onnx, openvino, ...; default: "
        "the one whose runtime is --runtime, else the package's primary format)",
    )
    p.add_argument(
        "--provider",
        default=None,
        help="execution provider (device) of the runtime to run it on: CUDAExecutionProvider, "
        "or GPU with --runtime openvino on an Intel box, ... (default: the runtime's best); "
        "one that does not run it here is a WARNING, not an error",
    )

    dev = sub.add_parser("devices", help="device agents").add_subparsers(dest="sub", required=True)
    p = add(dev, "list", cmd_devices_list, "discover agents on the LAN (mDNS) and record them")
    p.add_argument(
        "--interface",
        action="append",
        default=None,
        help="browse only on this interface address (repeatable)",
    )
    p.add_argument("--timeout", type=_seconds, default=3.0, help="seconds to listen for agents (3)")
    p.add_argument("--known", action="store_true", help="list recorded devices without browsing")
    p = add(
        dev,
        "add",
        cmd_devices_add,
        "record an agent by its address, where mDNS does not reach (other subnets, VPNs)",
    )
    p.add_argument("address", help="HOST or HOST:PORT (default port 8765), e.g. 10.0.4.17:8765")
    p.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for it (5)")
    p = add(
        dev,
        "pair",
        cmd_devices_pair,
        "pair with a device using the code that outpost-agent pair shows on it",
    )
    p.add_argument("device", help="device id (or a unique prefix) from outpost devices list")
    p.add_argument("--code", required=True, help="the 6-digit one-time code")
    p.add_argument("--interface", action="append", default=None)
    p = add(
        dev,
        "forget",
        cmd_devices_forget,
        "unpin a device here and ask it to drop this desktop's key (pair again later)",
    )
    p.add_argument("device", help="device id (or a unique prefix) from outpost devices list")

    _add_packaging_parsers(sub, add)
    p = add(sub, "deploy", cmd_deploy, "install an export's package on a device")
    p.add_argument("export", help="export id or 'latest'")
    p.add_argument("--device", required=True)
    p.add_argument("--interface", action="append", default=None)
    p.add_argument(
        "--activate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the new version at once (default); --no-activate leaves it staged",
    )
    p.add_argument(
        "--provider",
        default=None,
        help="execution provider to ask for (e.g. CUDAExecutionProvider, or GPU for OpenVINO on "
        "an Intel box; default: the fastest)",
    )
    for action, text in (
        ("activate", "serve a model again, or switch it to its staged (or another) version"),
        ("deactivate", "stop serving a model on a device (its files stay)"),
        ("uninstall", "remove every version of a model from a device"),
        ("rollback", "make a model's previous version active again"),
    ):
        p = add(dev, action, cmd_devices_model, text)
        p.set_defaults(action=action)
        p.add_argument("device", help="device id (or a unique prefix)")
        p.add_argument("model", help="model name on the device")
        p.add_argument("--interface", action="append", default=None)
        if action == "activate":
            p.add_argument("--version", default=None, help="the version to serve")
        if action == "uninstall":
            p.add_argument(
                "--force", action="store_true", help="even when it is the only model serving"
            )

    p = add(
        sub,
        "usage",
        cmd_usage,
        "device x model usage table (requests, errors, p50/p90/p99, throughput); "
        "--device pulls that device first",
    )
    p.add_argument("--device", default=None, help="one device (default: every device)")
    p.add_argument(
        "--pull",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ask the device(s) for fresh usage first (default: only with --device)",
    )
    p.add_argument("--interface", action="append", default=None)
    p = add(
        dev,
        "sync",
        cmd_devices_sync,
        "pull the usage of every paired device into the workspace; --watch SECONDS repeats",
    )
    p.add_argument("--interface", action="append", default=None)
    p.add_argument(
        "--watch", type=_seconds, default=None, metavar="SECONDS", help="pull again every SECONDS"
    )
    p.add_argument(
        "--rounds", type=_rounds, default=None, help="with --watch: stop after N pulls (N >= 1)"
    )
    p = add(
        dev,
        "show",
        cmd_devices_show,
        "one device: system, accelerators, runtimes, installed models, last usage",
    )
    p.add_argument("device", help="device id (or a unique prefix) from outpost devices list")
    p.add_argument("--interface", action="append", default=None)
    deps = sub.add_parser("deployments", help="what is deployed where, and its history")
    deps_sub = deps.add_subparsers(dest="sub", required=True)
    p = add(deps_sub, "list", cmd_deployments_list, "the latest deployment of each model")
    p.add_argument("--device", default=None)
    p = add(
        deps_sub,
        "history",
        cmd_deployments_history,
        "every deploy/activate/deactivate/rollback/uninstall on a device",
    )
    p.add_argument("--device", required=True)
    p.add_argument("--model", default=None)
    p = add(
        sub,
        "bench",
        cmd_bench,
        "time an export's model on a device (recorded), and print its per-device latency table",
    )
    p.add_argument("export", help="export id or 'latest'")
    p.add_argument("--device", default=None, help="benchmark on this device first")
    p.add_argument("--runs", type=int, default=50, help="timed runs, warm-up excluded (50)")
    p.add_argument("--interface", action="append", default=None)

    p = add(sub, "demo", cmd_demo, "the whole loop on a sample dataset, headless")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--count", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)

    add(sub, "studio", cmd_studio, "the desktop app (Outpost Studio; needs the gui extra)")

    p = add(sub, "worker", cmd_worker, "run a job in this process (used by the desktop app)")
    p.add_argument("job", choices=["train"])
    p.add_argument("--framework", default="ultralytics")
    p.add_argument("--spec", type=Path, required=True)
    return parser


@contextlib.contextmanager
def _stdout_reserved(reserve: bool) -> Iterator[Any]:
    """Under --json keep stdout for the one JSON document: anything else printed meanwhile
    (libraries, native code) goes to stderr. Restored on exit."""
    if not reserve:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved_fd, saved_stdout = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = os.fdopen(os.dup(saved_fd), "w", encoding="utf-8")
    try:
        yield out
    finally:
        out.close()
        sys.stderr.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved_stdout


def main(argv: list[str] | None = None) -> int:
    from runtimes.pipes import quiet_on_closed_pipe

    return quiet_on_closed_pipe(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    from runtimes import netaudit

    netaudit.install_from_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "rounds", None) is not None and getattr(args, "watch", None) is None:
        parser.error("devices sync: --rounds counts the pulls of --watch; add --watch SECONDS")
    args.exit_code = 0
    if getattr(args, "workspace", None) is None and args.global_workspace is not None:
        args.workspace = args.global_workspace
    args.json = bool(getattr(args, "json", False) or args.global_json)
    with _stdout_reserved(args.json) as out:
        try:
            result = args.handler(args)
        except OutpostError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            hint = getattr(args, "interrupt_hint", None)
            print(f"interrupted; {hint}" if hint else "interrupted", file=sys.stderr)
            return 130
        if args.json:
            out.write(json.dumps(result, indent=2, default=str) + "\n")
            out.flush()
            return int(args.exit_code)
    if isinstance(result, str):
        print(result)
    elif result is not None:
        print(json.dumps(result, indent=2, default=str))
    sys.stdout.flush()
    return int(args.exit_code)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
