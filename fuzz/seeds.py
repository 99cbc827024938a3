#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/TARGET/): a few small valid and invalid inputs per target.
Re-run after changing a target's input format: python3 fuzz/seeds.py"""
import base64, hashlib, hmac, json, os, struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# ---- frame_decode: [max_lo, max_hi, n, n chunk sizes, stream] ----
def frame(b0, payload, mask=b"\x37\xfa\x21\x3d", masked=True):
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n <= 0xFFFF:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def decode_seed(name, stream, max_message=1000, chunks=(1, 3, 7)):
    ctl = struct.pack("<H", max_message) + bytes([len(chunks)]) + bytes(chunks)
    write("frame_decode", name, ctl + stream)


decode_seed("text", frame(0x81, b'{"op":"ping"}'))
decode_seed("fragmented_text", frame(0x01, "héll".encode()[:3]) + frame(0x89, b"hi") + frame(0x80, "héll".encode()[3:]))
decode_seed("binary_16bit_len", frame(0x82, bytes(300)), max_message=4000)
decode_seed("close", frame(0x88, struct.pack(">H", 1000) + b"bye") + frame(0x8A, b""))
decode_seed("bad_utf8", frame(0x81, b"\xc3\x28"))
decode_seed("too_big", frame(0x82, bytes(200)), max_message=100)
decode_seed("unmasked", frame(0x81, b"x", masked=False))
decode_seed("bad_close_code", frame(0x88, struct.pack(">H", 1005)))
decode_seed("stray_continuation", frame(0x80, b"x"))
decode_seed("len64_top_bit", bytes([0x82, 0xFF]) + b"\x80" + bytes(7) + b"\0\0\0\0")

# ---- handshake: the raw request head ----
UPGRADE = ("GET /ws?channels=a,b%2Cc&since=1700000000000-0&v=1.2 HTTP/1.1\r\nHost: example.com\r\n"
           "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n")
write("handshake", "upgrade", UPGRADE + "\r\n")
write("handshake", "bearer_header", UPGRADE + "Authorization: Bearer abc.def.ghi\r\n\r\n")
write("handshake", "protocol_token", UPGRADE + "Sec-WebSocket-Protocol: wsgate, bearer.abc.def\r\n\r\n")
write("handshake", "query_token", UPGRADE.replace("?channels", "?token=a%2Eb&channels") + "\r\n")
write("handshake", "dup_key", UPGRADE + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
write("handshake", "post", "POST /ws HTTP/1.1\r\nHost: x\r\n\r\n")
write("handshake", "http10", "GET /ws HTTP/1.0\r\n\r\n")
write("handshake", "partial", "GET /ws HTTP/1.1\r\nHost: exa")
write("handshake", "version_8", UPGRADE.replace("Version: 13", "Version: 8") + "\r\n")

# ---- api_http: raw HTTP/1.1 requests ----
body = b'{"channel":"doc:1","data":{"x":1}}'
write("api_http", "publish", b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: "
      + str(len(body)).encode() + b"\r\n\r\n" + body)
write("api_http", "pipelined", b"GET /healthz HTTP/1.1\r\n\r\nGET /stats?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
write("api_http", "http10_keepalive", b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
write("api_http", "chunked", b"POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
write("api_http", "conflicting_length", b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
write("api_http", "partial_body", b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
write("api_http", "too_big", b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n")
write("api_http", "garbage", b"\x00\x01 / HTTP/1.1\r\n\r\n")

# ---- client_protocol: a text frame payload (also read as a query string) ----
write("client_protocol", "subscribe", '{"op":"subscribe","channels":["doc:1","a b"],"id":1}')
write("client_protocol", "unsubscribe", '{"op":"unsubscribe","channels":["doc:1"],"id":"x"}')
write("client_protocol", "ping", '{"op":"ping","id":{"n":[1,2]}}')
write("client_protocol", "msg", '{"op":"msg","channel":"doc:1","data":{"k":"v"},"trace":"t-1"}')
write("client_protocol", "ack", '{"op":"ack","id":"1700000000000-3"}')
write("client_protocol", "refresh", '{"op":"refresh","token":"a.b.c","future":true}')
write("client_protocol", "escaped", '{"op":"sub\\u0073cribe","channels":["\\u0001"]}')
write("client_protocol", "not_object", '[1,2,3]')
write("client_protocol", "query", 'channels=a,b%2Cc&since=$&v=1.0&token=x%2Ey+z')
write("client_protocol", "recover", '{"op":"subscribe","channels":["doc:1","b"],"recover":{"doc:1":{"offset":17,"epoch":"x7Kq"}}}')
write("client_protocol", "recover_query", 'channels=doc:1,b&recover=doc:1:17:x7Kq,b:0:e%3A1')
write("client_protocol", "bad_escape", 'channels=%ZZ&v=%E2%82')

# ---- jwt: [mode, token] or [mode, header JSON, 0, claims JSON] (mode bit 0: sign here; bit 1: strict verifier) ----
SECRET = b"fuzz-secret-0123456789"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def signed(header, claims):
    msg = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    return msg + b"." + b64(hmac.new(SECRET, msg, hashlib.sha256).digest())


FAR = 4102444800  # 2100-01-01
good = {"sub": "u1", "exp": FAR, "channels": ["doc:*", "x"], "device": "d", "tenant": "t"}
write("jwt", "signed_by_target", b"\x01" + json.dumps({"alg": "HS256", "typ": "JWT"}).encode() + b"\0" + json.dumps(good).encode())
write("jwt", "signed_strict", b"\x03" + b'{"alg":"HS256"}\0' + json.dumps({"sub": "u", "exp": FAR, "iss": "iss", "aud": "aud", "tenant": "t"}).encode())
write("jwt", "expired", b"\x01" + b'{"alg":"HS256"}\0{"sub":"u","exp":1}')
write("jwt", "float_exp_nbf", b"\x01" + b'{"alg":"HS256","kid":"k"}\0{"sub":"u","exp":4102444800.5,"nbf":1e300}')
write("jwt", "alg_none", b"\x01" + b'{"alg":"none"}\0{"sub":"u","exp":4102444800}')
write("jwt", "valid_token", b"\x00" + signed({"alg": "HS256", "typ": "JWT"}, good))
write("jwt", "tampered", b"\x00" + signed({"alg": "HS256"}, good)[:-2] + b"AA")
write("jwt", "rs256_header", b"\x00" + signed({"alg": "RS256", "kid": "x"}, good))
write("jwt", "garbage", b"\x00not.a.token")

# ---- config: TOML, `--set k=v` and `--env NAME=VALUE` lines ----
write("config", "file", '[server]\nlisten = "127.0.0.1:0"\nthreads = 2\n[ws]\nmax_message_size = 65536\n'
      '[auth]\nmode = "jwt"\nhs256_secret = "s"\ndefault_channels = ["user:{sub}"]\n')
write("config", "sets", '--set ws.ping_interval=5\n--set server.ws_path="/socket"\n--set log.level=debug\n')
write("config", "env", '--env WSGATE_API__LISTEN=127.0.0.1:0\n--env WSGATE_SERVER__NODE_ID=7\n')
write("config", "cluster", '[cluster]\nredis = "redis://127.0.0.1:6379"\n')
write("config", "tls_half", '[tls]\ncert = "c.pem"\n')
write("config", "bad_key", '[server]\nlisten = "nope"\nunknown = 1\n')
write("config", "bad_type", '--set ws.max_message_size=-1\n--set server=1\n')
write("config", "not_toml", '[server\n= =\n')


# ---- cluster_event: a RESP reply to XREAD ----
def resp(v):
    if isinstance(v, list):
        return b"*%d\r\n" % len(v) + b"".join(resp(x) for x in v)
    if isinstance(v, int):
        return b":%d\r\n" % v
    if v is None:
        return b"$-1\r\n"
    b = v.encode() if isinstance(v, str) else v
    return b"$%d\r\n%s\r\n" % (len(b), b)


def xread(*entries):
    return resp([["bus", [[i, sum(([k, v] for k, v in f), [])] for i, f in entries]]])


base = [("origin", "n1"), ("node", "1"), ("seq", "5"), ("ts", "1700000000000")]
write("cluster_event", "channel", xread(("1-0", base + [("kind", "channel"), ("target", "doc:1"), ("data", '{"a":1}')])))
write("cluster_event", "broadcast", xread(("1-1", base + [("kind", "broadcast"), ("data", "[1]")])))
write("cluster_event", "user", xread(("2-0", base + [("kind", "user"), ("target", "u1"), ("device", "d"), ("nid", "3-4"), ("data", '"x"')])))
write("cluster_event", "sid", xread(("2-1", base + [("kind", "sid"), ("target", "123456789"), ("data", "{}")])))
write("cluster_event", "disconnect", xread(("3-0", base + [("kind", "disconnect"), ("scope", "user"), ("target", "u1"), ("data", '{"code":4000,"reason":"bye"}')])))
write("cluster_event", "unknown_kind", xread(("3-1", base + [("kind", "teleport"), ("data", "1")])))
write("cluster_event", "bad_json", xread(("4-0", base + [("kind", "channel"), ("target", "c"), ("data", "{")])))
write("cluster_event", "bad_id", xread(("x", base)))
write("cluster_event", "resp3_map", b"%1\r\n$3\r\nbus\r\n*1\r\n*2\r\n$3\r\n5-0\r\n%2\r\n$6\r\norigin\r\n$1\r\no\r\n$4\r\nkind\r\n$9\r\nbroadcast\r\n")
write("cluster_event", "nil", b"*-1\r\n")
# Found by fuzzing: an id that is valid JSON but overflows an f64 (echoed verbatim in replies).
write("client_protocol", "huge_exponent_id", '{"op":"ping","id":[1E999,2]}')

# ---- permessage_deflate: offer lines, also the bytes of one compressed client message ----
import zlib


def raw_deflate(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


write("permessage_deflate", "browser_offer", "permessage-deflate; client_max_window_bits")
write("permessage_deflate", "all_params", "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9\nx-foo")
write("permessage_deflate", "declined_then_ok", 'permessage-deflate; server_max_window_bits="08", permessage-deflate')
write("permessage_deflate", "json_message", raw_deflate(b'{"op":"subscribe","channels":["doc:1"],"id":1}'))
write("permessage_deflate", "zeros", raw_deflate(bytes(200000)))

# ---- msgpack: a client request or API body in MessagePack ----
write("msgpack", "subscribe", bytes.fromhex("83a26f70a9737562736372696265a86368616e6e656c7391a5646f633a31a2696401"))
write("msgpack", "numbers", bytes.fromhex("96cfffffffffffffffffd080cb3ff8000000000000ca3fc00000c0c3"))
write("msgpack", "int_key_map", bytes.fromhex("810102"))
write("msgpack", "nested", bytes([0x91] * 70) + b"\xc0")
# Found by fuzzing: a double whose JSON text came back one unit off without serde_json's float_roundtrip.
write("msgpack", "float_last_bit", bytes.fromhex("96cfffffffffffffffffd080cb3ff8000000080000ca3fc00000c0c2"))
