"""`python -m tests.testbed.ec2_cli search …`: the real cnd-fab CLI with the test-only EC2
endpoint resolver installed, for end-to-end tests against a moto server."""

from cnd_fab.cli import main
from tests.testbed.ec2_standin import install

if __name__ == "__main__":
    install()
    main()
