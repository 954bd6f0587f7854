"""The one ``podpost`` command: the roles, ``dev``, and the operator's tools.

Commands stay thin: they build settings, then call a role's ``serve`` or an admin
function; tables are built by pure functions in `podpost.tables`. The operator's commands
(caught, dlq, queue, trace, status) are declared in `podpost.cliops`, the options and the
error line every command shares in `podpost.cliopts`.

Every error a user sees is one line on stderr with a non-zero exit, as the README promises.
Typer would draw a usage error as a usage line, a hint and a boxed message; `main` runs
the app without click's standalone mode and prints `usage_error` instead. The stderr
console never wraps (``soft_wrap``), so an error piped to a file stays one line too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from podpost import cliops
from podpost.cliopts import NatsUrl, err, error, load_settings
from runtime import settings as settings_mod

app = typer.Typer(
    name="podpost",
    help="A policy-based, event-sourced SMTP relay for Kubernetes on NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def check_ingress(cfg: settings_mod.Settings) -> None:
    """What the ingress cannot start without, as a one-line error before anything runs:
    a loadable certificate pair, an implicit-TLS port only with one, valid PROXY CIDRs."""
    from ingress import tlsconfig
    from ingress.rules import proxyheader

    icfg = cfg.ingress
    try:
        tls = tlsconfig.load(icfg.tls_cert_file, icfg.tls_key_file)
        if tls is None and icfg.tls_port:
            raise tlsconfig.TLSError("PODPOST_INGRESS__TLS_PORT needs a certificate "
                                     "(PODPOST_INGRESS__TLS_CERT_FILE and _KEY_FILE)")
        proxyheader.networks(icfg.proxy_protocol_cidrs)
    except (tlsconfig.TLSError, ValueError) as exc:
        error(str(exc))
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
    check_ingress(cfg)
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
        Path | None, typer.Option(
            "--policies", help="Policy file (the file source); default: the dev policy "
            "shipped with podpost (every local client to the catcher).", show_default=False)
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(help="Where the embedded nats-server keeps its store "
                                "(relative to the current directory).")
    ] = Path(".podpost"),
    console_port: Annotated[int, typer.Option(
        help="Port of the web console on 127.0.0.1; 0 turns it off.")] = 8025,
    tls: Annotated[
        bool, typer.Option("--tls", help="Offer STARTTLS with a self-signed certificate "
                           "made under <state-dir>/tls.")
    ] = False,
) -> None:
    """Everything on one machine: embedded nats-server, file policies, ingress, dispatcher."""
    from podpost import devmode

    ingress: dict[str, object] = {"host": "127.0.0.1", "port": smtp_port}
    if tls:
        cert_file, key_file = devmode.self_signed(state_dir / "tls")
        ingress.update(tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    cfg = load_settings({
        "ingress": ingress,
        "reconciler": {"source": "file", "file": str(policies) if policies else None},
        "console": {"host": "127.0.0.1", "port": console_port},
    })
    if not Path(cfg.reconciler.file).is_file():
        error(f"policy file not found: {cfg.reconciler.file}")
        raise typer.Exit(2)
    check_ingress(cfg)
    devmode.run(cfg, nats_port=nats_port, state_dir=state_dir, console=console_port != 0)


@app.command()
def console(
    nats_url: NatsUrl = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (Mailpit's 8025 by default).")
                    ] = None,
) -> None:
    """The web console: caught mail per namespace, the queue, dead letters, a REST API.

    Read-only unless PODPOST_CONSOLE__TOKEN is set; actions then need that bearer token."""
    from console import main as console_main
    from podpost import process

    cfg = load_settings({"nats": {"url": nats_url}, "console": {"host": host, "port": port}})
    process.run(cfg, {"console": console_main.serve})


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


# --- the operator's commands: podpost.cliops ------------------------------------------------

app.add_typer(cliops.caught_app, name="caught")
app.add_typer(cliops.dlq_app, name="dlq")
app.add_typer(cliops.queue_app, name="queue")
app.command()(cliops.trace)
app.command()(cliops.status)


def _password_option(role: str) -> Any:
    from podpost import natsconfig

    variable = natsconfig.password_variable(role)
    return typer.Option(f"--{role}-password", envvar=variable,
                        help=f"Password of the {role} user (or ${variable}).")


@app.command("nats-config")
def nats_config(
    fmt: Annotated[str, typer.Option(
        "--format", help="conf (nats-server), helm-values (NATS chart), chart-values "
        "(podpost's chart) or secret.")] = "conf",
    prefix: Annotated[str | None, typer.Option(help="Bus prefix; PODPOST_NATS__PREFIX.")] = None,
    secret_name: Annotated[str, typer.Option(help="Secret holding the passwords.")
                           ] = "podpost-nats-users",
    namespace: Annotated[str | None, typer.Option(help="Namespace of the Secret.")] = None,
    ingress_password: Annotated[str | None, _password_option("ingress")] = None,
    dispatcher_password: Annotated[str | None, _password_option("dispatcher")] = None,
    reconciler_password: Annotated[str | None, _password_option("reconciler")] = None,
    admin_password: Annotated[str | None, _password_option("admin")] = None,
) -> None:
    """Print the per-role NATS users and their subject permissions.

    ``secret`` makes a random password for every role not given one."""
    from podpost import natsconfig
    from schemas import names

    given = {"ingress": ingress_password, "dispatcher": dispatcher_password,
             "reconciler": reconciler_password, "admin": admin_password}
    passwords = {role: value for role, value in given.items() if value}
    if fmt == "secret":
        for role in natsconfig.ROLES:
            passwords.setdefault(role, natsconfig.new_password())
    try:
        bus = names.Bus(prefix=prefix or load_settings().nats.prefix)
        text = natsconfig.render(bus, fmt, passwords, secret_name=secret_name,
                               namespace=namespace)
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    typer.echo(text, nl=False)


def usage_error(exc: typer.TyperException) -> str:
    """A usage error (missing argument, unknown option or command, bad value) as the one
    line that follows ``error: ``: typer's message, then where the help is."""
    line = " ".join(exc.format_message().split())
    ctx: Any = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        if not line.endswith((".", "?", "!")):
            line += "."
        line += f" Try '{ctx.command_path} {ctx.help_option_names[0]}'."
    return line


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `podpost`: help is printed
            sys.exit(exc.exit_code)
        error(usage_error(exc))
        sys.exit(exc.exit_code)
    except typer.Abort:
        error("aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
