"""The closed loop on MovieLens: the simulator (users choosing from live slates) and the
demo that runs it against a real broker, worker and server."""

from stream.sim.demo import MALFORMED, run_demo
from stream.sim.simulator import MovieLensSimulator, SimulationResult, throttle

__all__ = ["MALFORMED", "MovieLensSimulator", "SimulationResult", "run_demo", "throttle"]
