"""wire: the protocol models shared by agent and controller. Pydantic models only; no I/O.

PROTOCOL_VERSION history (one integer, bumped on any incompatible change):
  1 (2026-11-24): enrollment, bearer node credential, network map with long-poll serial, link reports,
                  admin views of nodes, pre-auth keys and topology.
"""

PROTOCOL_VERSION = 1
