"""Faithful local simulators of the proprietary cloud endpoints factoryflow talks to."""
