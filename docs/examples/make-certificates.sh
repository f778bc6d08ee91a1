#!/bin/sh
# A small certificate authority, an EC server certificate for localhost and
# 127.0.0.1, and a client certificate, all P-256, made with openssl in the
# current directory. The C s6-networking tools (BearSSL) accept them too.
set -eu
umask 077  # the keys: readable by their owner only

# The CA: a key and a self-signed certificate, valid ten years.
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
printf '%s\n' \
    'basicConstraints = critical, CA:TRUE' \
    'keyUsage = critical, keyCertSign, cRLSign' \
    'subjectKeyIdentifier = hash' >ca.ext
openssl req -new -key ca.key -subj '/O=Example/CN=Example CA' -out ca.csr
openssl x509 -req -in ca.csr -signkey ca.key -days 3650 -sha256 \
    -extfile ca.ext -out ca.pem

# The server: its names go in subjectAltName (clients check those, not CN).
# extendedKeyUsage stays non-critical: BearSSL refuses a critical one.
openssl ecparam -name prime256v1 -genkey -noout -out server.key
printf '%s\n' \
    'basicConstraints = critical, CA:FALSE' \
    'keyUsage = critical, digitalSignature' \
    'extendedKeyUsage = serverAuth' \
    'subjectAltName = DNS:localhost, IP:127.0.0.1' >server.ext
openssl req -new -key server.key -subj '/O=Example/CN=localhost' -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days 825 -sha256 -extfile server.ext -out server.pem

# A client certificate, for servers that ask for one (-Y, -y).
openssl ecparam -name prime256v1 -genkey -noout -out client.key
printf '%s\n' \
    'basicConstraints = critical, CA:FALSE' \
    'keyUsage = critical, digitalSignature' \
    'extendedKeyUsage = clientAuth' >client.ext
openssl req -new -key client.key -subj '/O=Example/CN=client one' -out client.csr
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days 825 -sha256 -extfile client.ext -out client.pem

rm -f ca.csr server.csr client.csr ca.ext server.ext client.ext

# The same anchor as a CADIR: one certificate per file, named HASH.0 (the C
# tools read only such names; ours reads any).
mkdir -p cadir
cp ca.pem "cadir/$(openssl x509 -hash -noout -in ca.pem).0"

chmod 755 cadir
chmod 644 ca.pem server.pem client.pem cadir/*.0  # certificates are public
