"""``recbridge data``: describe (``stats``) and check (``validate``) a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agent.cli.common import UserError, console, state, user_errors
from agent.config import DataSettings
from agent.data.loader import detect_format, load_dataset
from agent.data.schema import SPLITS, Dataset
from agent.data.stats import DataStats, LengthStats, compute_stats

PathArg = Annotated[
    Path | None,
    typer.Argument(help="Data folder or file (default: data.path).", show_default=False),
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="auto, shared, table or amazon (data.format).")
]
LenientOpt = Annotated[
    bool, typer.Option("--lenient", help="Skip and count bad records instead of failing.")
]
KCoreOpt = Annotated[
    int | None, typer.Option("--k-core", help="table/amazon: keep users/items with >= k.")
]
LENGTH_COLUMNS = ("min", "median", "mean", "p90", "max")


def _data_settings(
    ctx: typer.Context, path: Path | None, fmt: str | None, lenient: bool, k_core: int | None
) -> DataSettings:
    overrides: dict[str, Any] = {
        "data.path": str(path) if path is not None else None,
        "data.format": fmt,
        # Only when given: a plain run keeps data.lenient from the config file or env.
        "data.lenient": True if lenient else None,
        "data.k_core": k_core,
    }
    return state(ctx).settings(**overrides).data


def _format_name(settings: DataSettings) -> str:
    if settings.format != "auto":
        return settings.format
    return detect_format(Path(settings.path), settings)


def _n(value: int) -> str:
    return f"{value:,}"


def _lengths(stats: LengthStats) -> list[str]:
    return [
        _n(stats.min),
        f"{stats.median:g}",
        f"{stats.mean:.2f}",
        f"{stats.p90:g}",
        _n(stats.max),
    ]


def _overview(stats: DataStats, fmt: str) -> Table:
    table = Table(title=f"{stats.name} ({fmt})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("domains", ", ".join(stats.domains))
    table.add_row("users", _n(stats.users))
    table.add_row("items", _n(stats.items))
    table.add_row("interactions", _n(stats.interactions))
    table.add_row("users in several domains", _n(stats.multi_domain_users))
    for pair, users in stats.overlap.items():
        table.add_row(f"users in {pair}", _n(users))
    targets = ", ".join(f"{s} {_n(n)}" for s, n in stats.targets_not_in_train.items())
    table.add_row(
        "items never in train rows", f"{_n(stats.items_not_in_train)} (targets: {targets})"
    )
    return table


def _per_domain(stats: DataStats) -> Table:
    table = Table(title="Per domain (full user sequences; lengths count the domain's items)")
    for name in ("domain", "items", "users", "interactions", *LENGTH_COLUMNS):
        table.add_column(name, justify="left" if name == "domain" else "right")
    table.add_column("valid targets", justify="right")
    table.add_column("test targets", justify="right")
    valid, test = stats.splits["valid"], stats.splits["test"]
    for domain in stats.domains:
        table.add_row(
            domain,
            _n(stats.items_per_domain[domain]),
            _n(stats.users_per_domain[domain]),
            _n(stats.interactions_per_domain[domain]),
            *_lengths(stats.length_per_domain[domain]),
            _n(valid.targets_per_domain.get(domain, 0)),
            _n(test.targets_per_domain.get(domain, 0)),
        )
    table.add_row(
        "all",
        _n(stats.items),
        _n(stats.users),
        _n(stats.interactions),
        *_lengths(stats.length),
        _n(valid.rows),
        _n(test.rows),
        style="bold",
    )
    return table


def _per_split(stats: DataStats) -> Table:
    table = Table(title="Per split (row lengths include the valid/test target)")
    table.add_column("split")
    table.add_column("rows by domain mix")
    for name in ("rows", "interactions", *LENGTH_COLUMNS):
        table.add_column(name, justify="right")
    for split in SPLITS:
        s = stats.splits[split]
        table.add_row(split, "all", _n(s.rows), _n(s.interactions), *_lengths(s.length))
        for mix, lengths in s.length_by_mix.items():
            only = mix if mix == "mixed" else f"{mix} only"
            table.add_row("", only, _n(lengths.count), "", *_lengths(lengths), style="dim")
    return table


def _split_domains(stats: DataStats) -> Table:
    table = Table(title="Per split and domain: users / items / interactions")
    table.add_column("split")
    for domain in stats.domains:
        table.add_column(domain, justify="right")
    for split in SPLITS:
        s = stats.splits[split]
        table.add_row(
            split,
            *(
                f"{_n(s.users_per_domain[d])} / {_n(s.items_per_domain[d])} / "
                f"{_n(s.interactions_per_domain[d])}"
                for d in stats.domains
            ),
        )
    return table


def _report(data: Dataset) -> Table | None:
    if not data.report.skipped and not data.report.notes:
        return None
    table = Table(title="Load report")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("examples / detail")
    for reason, count in data.report.skipped.most_common():
        table.add_row(f"skipped: {reason}", _n(count), "; ".join(data.report.examples[reason]))
    for note in data.report.notes:
        table.add_row("note", "", note)
    return table


def stats_command(
    ctx: typer.Context,
    path: PathArg = None,
    fmt: FormatOpt = None,
    lenient: LenientOpt = False,
    k_core: KCoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Users, items and interactions per domain and split, overlap, lengths, targets."""
    with user_errors():
        settings = _data_settings(ctx, path, fmt, lenient, k_core)
        fmt_name = _format_name(settings)
        data = load_dataset(settings)
    stats = compute_stats(data)
    if as_json:
        console.print_json(data={"format": fmt_name, **stats.to_dict()})
        return
    for table in (_overview(stats, fmt_name), _per_domain(stats), _per_split(stats)):
        console.print(table)
    console.print(_split_domains(stats))
    report = _report(data)
    if report is not None:
        console.print(report)


def validate_command(
    ctx: typer.Context,
    path: PathArg = None,
    fmt: FormatOpt = None,
    lenient: LenientOpt = False,
    k_core: KCoreOpt = None,
) -> None:
    """Load the data: OK, or the first error (exit 2); --lenient counts bad records (exit 1)."""
    with user_errors():
        settings = _data_settings(ctx, path, fmt, lenient, k_core)
        fmt_name = _format_name(settings)
        data = load_dataset(settings)
    rows = ", ".join(f"{s} {_n(len(data.split(s)))}" for s in SPLITS)
    summary = (
        f"{settings.path} ({fmt_name}): {_n(len(data.items))} items, "
        f"{_n(len({u.user_id for u in data.users}))} users, rows {rows}"
    )
    skipped = data.report.total_skipped
    report = _report(data)
    if report is not None:
        console.print(report)
    if skipped:
        console.print(
            f"[yellow]loaded with {_n(skipped)} bad records skipped[/yellow]: {summary}",
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
    console.print(f"[green]OK[/green] {summary}", soft_wrap=True)


def reslice_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for the new data set (shared format).")],
    path: PathArg = None,
    valid: Annotated[int, typer.Option(min=1, help="New valid users.")] = 960,
    test: Annotated[int, typer.Option(min=1, help="New test users.")] = 937,
    seed: Annotated[int, typer.Option(help="Which train users are drawn.")] = 7,
) -> None:
    """A second data set: new valid and test users drawn from the train rows (the original
    held-out users left out); train every model on it anew."""
    from agent.data.reslice import reslice, write_shared

    with user_errors():
        settings = _data_settings(ctx, path, None, False, None)
        try:
            data = reslice(load_dataset(settings), valid=valid, test=test, seed=seed)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        write_shared(data, out)
    rows = ", ".join(f"{s} {_n(len(data.split(s)))}" for s in SPLITS)
    console.print(f"{out}: {_n(len(data.items))} items, rows {rows}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    data_app = typer.Typer(help="Describe and check data sets.", no_args_is_help=True)
    data_app.command("stats")(stats_command)
    data_app.command("validate")(validate_command)
    data_app.command("reslice")(reslice_command)
    app.add_typer(data_app, name="data")
