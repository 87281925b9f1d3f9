"""A vhost-user device backend in Python: QEMU runs the virtio transport, this process runs the
device's queues in the guest's shared memory.

`messages` decodes and encodes the vhost-user wire format (sans-I/O), `memory` maps the guest's
memory table, `virtqueue` walks split virtqueues, `backend` holds the session state machine and the
one-thread I/O loop. A device (such as the simulated NSM in `nitrokms.sim.nsm.vhost_user`) only
answers the descriptor chains its queues receive.
"""
