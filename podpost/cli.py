"""The one ``podpost`` command: the roles, ``dev``, and the operator's tools.

Commands stay thin: they build settings, then call a role's ``serve`` or an admin
function; tables are built by pure functions in `podpost.tables`.

Every error a user sees is one line on stderr with a non-zero exit, as the README promises.
Typer would draw a usage error as a usage line, a hint and a boxed message; `main` runs
the app without click's standalone mode and prints `usage_error` instead. The stderr
console never wraps (``soft_wrap``), so an error piped to a file stays one line too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from runtime import settings as settings_mod

app = typer.Typer(
    name="podpost",
    help="A policy-based, event-sourced SMTP relay for Kubernetes on NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True, highlight=False)

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
        error(str(exc))
        raise typer.Exit(2) from None


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


def error(message: str) -> None:
    """One line on stderr: ``error: <message>`` (the message is never read as markup)."""
    err.print(f"[red]error:[/red] {escape(message)}")


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


# --- the operator's commands: bodies in podpost.commands -----------------------------------

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
Ids = Annotated[list[str] | None, typer.Argument(
    help="DEAD stream sequences (the id column) or mail ids.", show_default=False)]
Every = Annotated[bool, typer.Option("--all", help="Every dead letter that passes the filters.")]
UpstreamKey = Annotated[str | None,
                        typer.Option("--upstream", help="Only this upstream (ns/name).")]
PolicyKey = Annotated[str | None, typer.Option("--policy", help="Only this policy (ns/name).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; do nothing.")]

caught_app = typer.Typer(help="Mail kept by the catcher sink.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)
app.add_typer(caught_app, name="caught")
app.add_typer(dlq_app, name="dlq")


def _nats(nats_url: str | None) -> settings_mod.Settings:
    return load_settings({"nats": {"url": nats_url}})


@caught_app.command("list")
def caught_list(nats_url: NatsUrl = None, json_: Json = False) -> None:
    """List the mail the catcher kept, oldest first."""
    from podpost.commands import caught

    caught.list_(_nats(nats_url), as_json=json_)


@caught_app.command("show")
def caught_show(
    mail: Annotated[str, typer.Argument(help="CAUGHT stream sequence (the id column) or mail id.")],
    nats_url: NatsUrl = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the stored message as is.")] = False,
    json_: Json = False,
) -> None:
    """Show one caught mail: envelope, headers and text."""
    from podpost.commands import caught

    caught.show(_nats(nats_url), mail, raw=raw, as_json=json_)


@dlq_app.command("list")
def dlq_list(
    nats_url: NatsUrl = None, upstream: UpstreamKey = None, policy: PolicyKey = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only dead letters younger than this (90s, 5m, 2h, 7d).")] = None,
    json_: Json = False,
) -> None:
    """List dead letters, oldest first."""
    from podpost.commands import dlq

    dlq.list_(_nats(nats_url), dlq.Where(upstream=upstream, policy=policy, since=since),
              as_json=json_)


@dlq_app.command("show")
def dlq_show(
    dead: Annotated[str, typer.Argument(help="DEAD stream sequence (the id column) or mail id.")],
    nats_url: NatsUrl = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the stored message as is.")] = False,
    json_: Json = False,
) -> None:
    """Show one dead letter: why it died, its attempts and its envelope."""
    from podpost.commands import dlq

    dlq.show(_nats(nats_url), dead, raw=raw, as_json=json_)


REPLAY_HELP = "\n\n".join([
    "Queue dead letters again, then remove them from the dead-letter queue.",
    "Each replay is published with Nats-Msg-Id <mail id>.replay.<id>, so within the MAIL "
    "stream's duplicate window (an hour) a dead letter is queued once, however often it "
    "is replayed. A replayed dead letter is moved, not copied: it leaves `dlq list`; a "
    "replay that fails again comes back as a new dead letter; `podpost trace` shows the "
    "replay. Replaying an id that was replayed already is only noted.",
    "A body kept in the object store is copied for the replay, and the original is "
    "deleted once nothing refers to it.",
])
PURGE_HELP = ("Delete dead letters for good, with their bodies in the object store (a body "
              "still used by another dead letter or by queued mail is kept).")


@dlq_app.command("replay", help=REPLAY_HELP)
def dlq_replay(
    ids: Ids = None, every: Every = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None,
    to_upstream: Annotated[str | None, typer.Option(
        "--to-upstream", help="Send to this upstream (ns/name) instead.")] = None,
    dry_run: DryRun = False, json_: Json = False,
) -> None:
    from podpost.commands import dlq

    dlq.replay(_nats(nats_url), ids or [], every=every,
               where=dlq.Where(upstream=upstream, policy=policy), to_upstream=to_upstream,
               dry_run=dry_run, as_json=json_)


@dlq_app.command("purge", help=PURGE_HELP)
def dlq_purge(
    ids: Ids = None, every: Every = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None,
    older_than: Annotated[str | None, typer.Option(
        "--older-than", help="Only dead letters older than this (2h, 7d).")] = None,
    dry_run: DryRun = False, json_: Json = False,
) -> None:
    from podpost.commands import dlq

    dlq.purge(_nats(nats_url), ids or [], every=every,
              where=dlq.Where(upstream=upstream, policy=policy, older_than=older_than),
              dry_run=dry_run, as_json=json_)


# --- the live queue: podpost.commands.queue, admin.queueing ----------------------------------

queue_app = typer.Typer(help="Mail waiting for delivery: list, show, retry now, hold, "
                        "suspend an upstream, move, purge.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")
QueueIds = Annotated[list[str] | None, typer.Argument(
    help="MAIL stream sequences (the id column) or mail ids.", show_default=False)]
QueueAll = Annotated[bool, typer.Option("--all", help="Every queued mail the filters keep.")]
OlderThan = Annotated[str | None, typer.Option(
    "--older-than", help="Only mail received longer ago than this (90s, 2h, 1d).")]
State = Annotated[str | None, typer.Option(
    "--state", help="Only mail in this state: waiting, deferred or held.")]


def _where(upstream: str | None, policy: str | None, older_than: str | None,
           state: str | None) -> Any:
    from podpost.commands import queue

    return queue.Where(upstream=upstream, policy=policy, older_than=older_than, state=state)


@queue_app.command("list")
def queue_list(
    nats_url: NatsUrl = None, upstream: UpstreamKey = None, policy: PolicyKey = None,
    older_than: OlderThan = None, state: State = None, json_: Json = False,
) -> None:
    """List queued mail in stream order: state, attempts, last reply, next attempt."""
    from podpost.commands import queue

    queue.list_(_nats(nats_url), _where(upstream, policy, older_than, state), as_json=json_)


@queue_app.command("show")
def queue_show(
    mail: Annotated[str, typer.Argument(help="MAIL stream sequence (the id column) or mail id.")],
    nats_url: NatsUrl = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the stored message as is.")] = False,
    json_: Json = False,
) -> None:
    """Show one queued mail: its envelope, state and attempts."""
    from podpost.commands import queue

    queue.show(_nats(nats_url), mail, raw=raw, as_json=json_)


@queue_app.command("retry")
def queue_retry(
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    json_: Json = False,
) -> None:
    """Make deferred mail due now (a copy is queued and the deferred original removed;
    its attempt count goes on)."""
    from podpost.commands import queue

    queue.move(_nats(nats_url), ids or [], every=every,
               where=_where(upstream, policy, older_than, None), to_upstream=None,
               as_json=json_)


@queue_app.command("hold")
def queue_hold(
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    state: State = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the record.")] = "",
    json_: Json = False,
) -> None:
    """Hold mail: no dispatcher attempts it until it is released."""
    from podpost.commands import queue

    queue.hold(_nats(nats_url), ids or [], every=every,
               where=_where(upstream, policy, older_than, state), reason=reason,
               release=False, as_json=json_)


@queue_app.command("release")
def queue_release(
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    json_: Json = False,
) -> None:
    """Release held mail: it is attempted again within seconds."""
    from podpost.commands import queue

    queue.hold(_nats(nats_url), ids or [], every=every,
               where=_where(upstream, policy, older_than, None), reason="", release=True,
               as_json=json_)


@queue_app.command("suspend")
def queue_suspend(
    upstream: Annotated[str, typer.Argument(help="The upstream (ns/name).")],
    nats_url: NatsUrl = None,
    for_: Annotated[str | None, typer.Option(
        "--for", help="Resume by itself after this long (30m, 2h); default: until resumed.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the record.")] = "",
    json_: Json = False,
) -> None:
    """Stop every dispatcher replica attempting an upstream; its mail waits (no attempt
    is counted, nothing is dead-lettered for it)."""
    from podpost.commands import queue

    queue.suspend(_nats(nats_url), upstream, for_=for_, reason=reason, as_json=json_)


@queue_app.command("resume")
def queue_resume(
    upstream: Annotated[str, typer.Argument(help="The upstream (ns/name).")],
    nats_url: NatsUrl = None, json_: Json = False,
) -> None:
    """End an upstream's suspension: its mail is attempted again within seconds."""
    from podpost.commands import queue

    queue.resume(_nats(nats_url), upstream, as_json=json_)


@queue_app.command("move")
def queue_move(
    to_upstream: Annotated[str, typer.Option(
        "--to-upstream", help="Send to this upstream (ns/name) instead.")],
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    state: State = None, json_: Json = False,
) -> None:
    """Move queued mail to another upstream: the copy is stored before the original is
    removed; safe to interrupt and run again."""
    from podpost.commands import queue

    queue.move(_nats(nats_url), ids or [], every=every,
               where=_where(upstream, policy, older_than, state), to_upstream=to_upstream,
               as_json=json_)


@queue_app.command("purge")
def queue_purge(
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    state: State = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before a bulk purge.")
                   ] = False,
    json_: Json = False,
) -> None:
    """Delete queued mail for good (asks first when more than one mail is chosen)."""
    from podpost.commands import queue

    queue.purge(_nats(nats_url), ids or [], every=every,
                where=_where(upstream, policy, older_than, state), yes=yes, as_json=json_)


@app.command()
def trace(
    mail: Annotated[str, typer.Argument(help="The mail id (from `250 queued as <id>`).")],
    nats_url: NatsUrl = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only events younger than this (2h, 1d).")] = None,
    json_: Json = False,
) -> None:
    """A mail's history: accepted, attempted, deferred, delivered, dead, replayed."""
    from podpost.commands import trace as trace_cmd

    trace_cmd.trace(_nats(nats_url), mail, since=since, as_json=json_)


@app.command()
def status(nats_url: NatsUrl = None, json_: Json = False) -> None:
    """Per upstream and policy: queued, in flight, deferred, dead; the snapshot's age."""
    from podpost.commands import status as status_cmd

    status_cmd.status(_nats(nats_url), as_json=json_)


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
