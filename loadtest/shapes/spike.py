"""A spike: add to the locustfile with ``-f loadtest/locustfile.py,loadtest/shapes/spike.py``."""

from locust import LoadTestShape


class SpikeShape(LoadTestShape):
    """10 users, a spike to 80 for one minute after two, back to 10, stop after five."""

    def tick(self):
        elapsed = self.get_run_time()
        if elapsed < 120:
            return 10, 10
        if elapsed < 180:
            return 80, 40
        if elapsed < 300:
            return 10, 40
        return None
