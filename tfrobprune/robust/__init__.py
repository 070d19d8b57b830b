"""The robust objectives: attacks (PGD, FGSM), interval and CROWN-IBP bounds, their ramp-up schedules and losses."""
