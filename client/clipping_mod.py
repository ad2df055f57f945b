"""The client's side of client-level DP with client-side clipping (a Flower mod).

Under ``--client-dp client-fixed`` or ``client-adaptive`` the coordinator's
Flower DP wrapper sends a clipping norm with every train instruction, and the
client clips its own update before it leaves the node (the only kind of
client-level DP that composes with secure aggregation). This mod hands such
instructions to Flower's ``fixedclipping_mod``/``adaptiveclipping_mod``; every
other message passes through untouched.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedpriv.shared_models.messages import CLIENT_CLIP_MODE, CONFIG_KEY


def client_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this node's update when the train instruction asks for client-side clipping."""
    if msg.metadata.message_type != "train" or CONFIG_KEY not in msg.content.config_records:
        return call_next(msg, context)
    mode = msg.content.config_records[CONFIG_KEY].get(CLIENT_CLIP_MODE)
    if mode == "adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    if mode == "fixed":
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
