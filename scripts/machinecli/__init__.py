"""docker-machine's everyday commands over this project's Pulumi stacks (``scripts/machine``; docs/cli.md).

The commands: ``cli`` (the typer app, ``--stack``, one-line errors), ``app`` (commands on machines), ``stackcmds``
(``up``, ``preview``, ``unlock``, ``backend``). What they use: ``workspace`` (every Pulumi operation, through the
Automation API), ``machines`` (machines from stack outputs, config edits), ``probe`` (live state), ``power``,
``lifecycle`` (create, rm), ``maintenance`` (provision, certificates, upgrade), ``sshclient`` (ssh, scp, rsync and
sshfs with the pinned host key), ``changes`` and ``preview`` (what an ``up`` would do), ``team`` (a shared backend),
``formats`` and ``gotext`` (docker-machine's output formats and Go's templates), ``ui``, ``errors``.
"""
