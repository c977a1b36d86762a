"""Load tests of a running tuneserve server: locust users (loadtests/locustfile.py), load shapes
(loadtests/shapes.py), the headless runner (loadtests/run.sh) and its result summary
(loadtests/summary.py). README "Load testing" says how to run them."""
