"""docker-machine's everyday commands over this project's Pulumi stacks (``scripts/machine``).

Modules:

* ``gotext`` — the bits of Go's text/template, text/tabwriter and fmt that docker-machine's output is made of;
* ``formats`` — exact output formats (``env``, ``config``, ``ls``, ``inspect``), pure functions;
* ``stacks`` — machines from stack outputs, stack config edits and targeted ``pulumi up`` (the only
  module that runs ``pulumi``);
* ``probe`` — live state: TLS ``/_ping`` with the client certificate, then the SSH port;
* ``remote`` — ``ssh``/``scp`` command lines with the stack's key;
* ``app`` — the typer application.
"""
