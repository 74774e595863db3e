"""The cluster's PKI: identities, the CA and the certificates it issues."""
