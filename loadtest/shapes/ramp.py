"""A ramp: add to the locustfile with ``-f loadtest/locustfile.py,loadtest/shapes/ramp.py``."""

from locust import LoadTestShape


class RampShape(LoadTestShape):
    """Ramp from 0 to 50 users over 5 minutes, hold for 2, then stop."""

    def tick(self):
        elapsed = self.get_run_time()
        if elapsed < 300:
            return max(1, int(50 * elapsed / 300)), 5
        if elapsed < 420:
            return 50, 5
        return None
