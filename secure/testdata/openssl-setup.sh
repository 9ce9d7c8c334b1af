#!/bin/sh
# Creates a Warren CA and certificates with openssl, as docs/security.md
# shows. Usage: openssl-setup.sh DIR IDENTITY...
# Every identity gets an ECDSA P-256 key; an identity ending in -ed gets
# Ed25519 (sign only).
set -eu
dir=$1; shift
cd "$dir"
umask 077
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.crt -days 3650 -subj "/O=Warren/CN=Warren CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for id in "$@"; do
  case $id in
  *-ed)
    openssl genpkey -algorithm ed25519 -out "$id.key"
    usage=digitalSignature ;;
  *)
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$id.key"
    usage=digitalSignature,keyAgreement ;;
  esac
  openssl req -new -key "$id.key" -out "$id.csr" -subj "/O=Warren/CN=$id"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,%s\nextendedKeyUsage=clientAuth,serverAuth\nsubjectAltName=URI:warren:%s\n' \
    "$usage" "$id" > "$id.ext"
  openssl x509 -req -in "$id.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days 365 -out "$id.crt" -extfile "$id.ext" 2>/dev/null
  rm "$id.csr" "$id.ext"
done
