"""What every suite that runs real processes needs, written once: loopback ports (``ports``),
polling waits (``waits``), subprocess control (``processes``), signing keys and the identity
provider stand-in (``idp``), the one fake FHIR server (``fhir_upstream``), Prometheus scrapes
(``metrics``), TLS files (``tls``) and the smartgate + Envoy stack (``stack``)."""
