"""``python -m hvs_alert_receiver``: run the lab's alert receiver (the Compose service ``alert-receiver``)."""

from hvs_alert_receiver import main

main()
