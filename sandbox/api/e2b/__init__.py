"""E2B compatibility: E2B's REST control plane (control.py) and its in-sandbox daemon's API,
envd (envd.py), served by this API over rollouts. service.py holds what both do;
connect.py the Connect RPC wire format envd speaks."""
