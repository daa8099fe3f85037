"""The Leap API simulator: a seeded portfolio served over Leap's enrollment endpoints, with faults.

`Portfolio` holds the meters, the clock and the mutations; `SimServer` serves one on a loopback
port for tests and the demo; `serve()` backs `alerter sim`.
"""

from alerter.sim.app import RequestLog, SimServer, build_app, serve
from alerter.sim.churn import Change
from alerter.sim.faults import Fault, Faults
from alerter.sim.portfolio import Portfolio

__all__ = ["Change", "Fault", "Faults", "Portfolio", "RequestLog", "SimServer", "build_app", "serve"]
