"""The one ``podpost`` command: the roles, ``dev``, and the operator's tools.

Commands stay thin: they build settings, then call a role's ``serve`` or an admin
function; tables are built by pure functions in `podpost.tables`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from podpost import settings as settings_mod

app = typer.Typer(
    name="podpost",
    help="A policy-based, event-sourced SMTP relay for Kubernetes on NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)

NatsUrl = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="PODPOST_NATS_URL",
                 help="NATS server URL(s), comma-separated."),
]


def load_settings(overrides: dict[str, Any] | None = None) -> settings_mod.Settings:
    """Settings from PODPOST_* variables and flags; a bad variable is a one-line error."""
    try:
        return settings_mod.load(os.environ, overrides)
    except settings_mod.SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def ingress(
    nats_url: NatsUrl = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="SMTP port to listen on.")] = None,
) -> None:
    """Accept SMTP from pods, persist each mail in JetStream, then answer 250."""
    from ingress import main as ingress_main
    from podpost import process

    cfg = load_settings({"nats": {"url": nats_url}, "ingress": {"host": host, "port": port}})
    process.run(cfg, {"ingress": ingress_main.serve})


@app.command()
def dispatcher(
    nats_url: NatsUrl = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option("--upstream", help="Serve only this upstream (ns/name); repeatable."),
    ] = None,
) -> None:
    """Deliver queued mail to the upstreams, with retries and dead-lettering."""
    from dispatcher import main as dispatcher_main
    from podpost import process

    cfg = load_settings({"nats": {"url": nats_url}, "dispatcher": {"upstreams": upstream or None}})
    process.run(cfg, {"dispatcher": dispatcher_main.serve})


@app.command()
def reconciler(
    nats_url: NatsUrl = None,
    source: Annotated[str | None, typer.Option(help="file or kubernetes.")] = None,
    policies: Annotated[
        Path | None, typer.Option("--policies", help="Policy file for the file source.")
    ] = None,
) -> None:
    """Build the policy snapshot from a source and publish it."""
    from podpost import process
    from reconciler import main as reconciler_main

    cfg = load_settings({
        "nats": {"url": nats_url},
        "reconciler": {"source": source, "file": str(policies) if policies else None},
    })
    process.run(cfg, {"reconciler": reconciler_main.serve})


@app.command()
def dev(
    smtp_port: Annotated[int, typer.Option(help="SMTP port on 127.0.0.1.")] = 2525,
    nats_port: Annotated[int, typer.Option(help="Port of the embedded nats-server.")] = 4222,
    policies: Annotated[
        Path, typer.Option("--policies", help="Policy file (the file source).")
    ] = Path("deploy/examples/dev.yaml"),
    state_dir: Annotated[
        Path, typer.Option(help="Where the embedded nats-server keeps its store.")
    ] = Path(".podpost"),
) -> None:
    """Everything on one machine: embedded nats-server, file policies, ingress, dispatcher."""
    from podpost import devmode

    if not policies.is_file():
        err.print(f"[red]error:[/red] policy file not found: {policies}")
        raise typer.Exit(2)
    cfg = load_settings({
        "ingress": {"host": "127.0.0.1", "port": smtp_port},
        "reconciler": {"source": "file", "file": str(policies)},
    })
    devmode.run(cfg, nats_port=nats_port, state_dir=state_dir)


@app.command()
def crds(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write one file per CRD into this directory instead."),
    ] = None,
) -> None:
    """Print the CustomResourceDefinitions (generated from schemas/) as multi-document YAML."""
    from podpost import crds as crds_mod

    if out is None:
        typer.echo(crds_mod.render_all(), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in crds_mod.documents().items():
        (out / name).write_text(crds_mod.render(doc), encoding="utf-8")
        err.print(f"wrote {out / name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
