"""Who may talk to a node: certificates, TLS contexts, bearer tokens and roles.

`identity` (pure) names what a certificate vouches for; `certs` makes certificates with the `cryptography`
package (never hand-rolled ASN.1); `tls` builds the `ssl` contexts the transport and the HTTP server use and
reloads them when their files change; `tokens` holds the hashed bearer tokens and their roles. No asyncio and
no knowledge of the ring here: the API and the transport call in.
"""
