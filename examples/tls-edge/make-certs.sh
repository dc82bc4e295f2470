#!/bin/sh
# Make the certificates that examples/tls-edge/ginx.yaml names, into
# certs/ next to this script. They are for trying the example on your own
# machine only: keys are written unencrypted, and nothing here belongs in a
# repository (certs/ is created fresh and may be deleted at any time).
#
#   sh examples/tls-edge/make-certs.sh
#
# What it makes:
#   ca.pem                    a private CA for the two sites (give it to curl
#                             with --cacert; browsers will not trust it)
#   site-a.example.pem/.key   ECDSA P-256, for site-a.example and www.site-a.example
#   site-b.example.pem/.key   RSA 2048, for site-b.example
#   internal-ca.pem           another private CA, the upstream's
#   app.internal.pem/.key     the upstream's certificate, for app.internal,
#                             signed by internal-ca.pem
# Certificate files hold the leaf first, then the CA that signed it.
# Needs OpenSSL 1.1.1 or later.
set -eu

dir="$(cd "$(dirname "$0")" && pwd)/certs"
mkdir -p "$dir"
cd "$dir"
days=365
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# ca NAME SUBJECT: a self-signed CA, NAME.pem and NAME.key.
ca() {
    openssl req -x509 -new -nodes -days "$days" \
        -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$1.key" -out "$1.pem" -subj "$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# leaf CA NAME KEYSPEC DNS...: NAME.pem (leaf, then the CA) and NAME.key.
leaf() {
    ca_name=$1 name=$2 keyspec=$3
    shift 3
    san=""
    for dns in "$@"; do san="${san:+$san,}DNS:$dns"; done
    case $keyspec in
        ec) newkey="-newkey ec -pkeyopt ec_paramgen_curve:P-256" ;;
        rsa) newkey="-newkey rsa:2048" ;;
    esac
    # shellcheck disable=SC2086
    openssl req -new -nodes $newkey -keyout "$name.key" \
        -out "$tmp/$name.csr" -subj "/CN=$name" 2>/dev/null
    cat > "$tmp/$name.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
EXT
    openssl x509 -req -in "$tmp/$name.csr" -days "$days" \
        -CA "$ca_name.pem" -CAkey "$ca_name.key" \
        -set_serial "0x$(openssl rand -hex 8)" \
        -extfile "$tmp/$name.ext" -out "$tmp/$name.leaf" 2>/dev/null
    cat "$tmp/$name.leaf" "$ca_name.pem" > "$name.pem"
    chmod 600 "$name.key"
}

ca ca "/CN=ginx example CA"
leaf ca site-a.example ec site-a.example www.site-a.example
leaf ca site-b.example rsa site-b.example

ca internal-ca "/CN=ginx example internal CA"
leaf internal-ca app.internal ec app.internal

# The CA keys are only needed to sign; keep them out of the way.
chmod 600 ca.key internal-ca.key
echo "certificates written to $dir"
