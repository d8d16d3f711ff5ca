"""What the local VM drivers (qemu, virtualbox) share: where their files live and who owns them (``paths``), the
image cache (``images``), address leases (``leases``), the processes they start and signal (``process``) and the VM
resource's diff (``vm``). Not a driver: the registry skips names starting with ``_``."""
