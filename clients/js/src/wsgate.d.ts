// Type definitions for wsgate.js (the wsgate client SDK). The wire protocol is docs/PROTOCOL.md.

export declare const VERSION: string;

/** Close codes the client uses for reasons of its own (never sent by the server). */
export declare const LOCAL: Readonly<{
  /** No answer to `op: ping` within `pongTimeout`: the connection is dead. */
  HEARTBEAT_TIMEOUT: 4900;
  /** The transport could not be opened, or no welcome came within `openTimeout`. */
  OPEN_FAILED: 4901;
  /** SSE / long-poll: the server no longer knows the session (404). */
  SESSION_ENDED: 4902;
  /** `getToken()` threw or rejected. */
  TOKEN_UNAVAILABLE: 4903;
}>;

export type TransportName = "websocket" | "sse" | "poll";
export type State = "disconnected" | "connecting" | "connected" | "reconnecting" | "closed";
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface Options {
  /** A JWT (`auth.mode = "jwt"`). */
  token?: string | null;
  /** Returns a fresh JWT: called before connecting when there is none or it is about to expire, to refresh it
   * (`op: refresh`) `refreshAhead` of its lifetime before `exp`, and after a 4001 close. */
  getToken?: (() => string | Promise<string>) | null;
  /** Transports in order of preference. Default `["websocket", "sse", "poll"]`. */
  transports?: TransportName[];
  /** Failed opens in a row (before any transport worked) after which the next transport is tried. Default 2. */
  fallbackAfter?: number;
  /** Reconnect delays in ms: full jitter, `random(0, min(cap, base * 2^attempt))`; at least `later` after a
   * "come back later" close (1013, 4008, 4029). Defaults 500, 30000, 5000. */
  backoff?: { base?: number; cap?: number; later?: number };
  /** ms to wait for any answer after a heartbeat before the connection counts as dead. Default 10000 (at most the
   * heartbeat interval). */
  pongTimeout?: number;
  /** ms from opening a transport to the welcome before the attempt counts as failed. Default 10000. */
  openTimeout?: number;
  /** Fraction of the token's lifetime before `exp` at which it is refreshed. Default 0.2. */
  refreshAhead?: number;
  /** Messages `send()` keeps while disconnected. Default 1000. */
  maxQueue?: number;
  /** ms between cumulative acks of user messages not marked `ack` (those marked are acked at once). Default 1000. */
  ackEvery?: number;
  /** Connect from the constructor (in a microtask). Default true. */
  autoConnect?: boolean;
  /** Paths of the fallback transports on the gateway's host. Defaults "/sse", "/poll". */
  ssePath?: string;
  pollPath?: string;
  /** Sent as `?v=` (the client's version, passed to the backend). */
  version?: string | null;
  /** Implementations where the runtime has none (Node < 22: `import WebSocket from "ws"`). */
  WebSocket?: unknown;
  EventSource?: unknown;
  fetch?: typeof fetch;
}

export interface Position {
  offset: number;
  epoch: string;
}

export interface PublicationContext {
  channel: string;
  /** For channels with history. */
  offset?: number;
  epoch?: string;
}

export interface RecoveryResult {
  /** true: nothing was missed while disconnected. false: publications may be missing; reload the state. */
  recovered: boolean;
  offset?: number;
  epoch?: string;
}

export interface SubscribeHandlers<T = Json> {
  onMessage?: (data: T, ctx: PublicationContext) => void;
  /** After each resubscribe (reconnect): whether every missed publication was delivered. */
  onRecovered?: (result: RecoveryResult) => void;
  /** The subscription was refused (e.g. 4003 channel not allowed) or revoked by a token refresh. */
  onError?: (error: WsgateError) => void;
}

export interface Subscription {
  readonly channel: string;
  /** Position of the last publication delivered (channels with history). */
  readonly position: Position | null;
  /** Resolves at the first successful subscribe; rejects when refused. */
  readonly ready: Promise<Subscription>;
  unsubscribe(): void;
}

export interface UserMessage<T = Json> {
  kind: "user" | "sid" | "broadcast";
  data: T;
  /** User messages: the id in the user's message store (deduplicated: each id is delivered once). */
  id?: string | null;
  replay?: boolean;
  user?: string;
}

export interface Events {
  state: (state: State, previous: State) => void;
  connected: (info: { sid: string; user: string | null; transport: TransportName }) => void;
  disconnected: (info: { code: number; reason: string; reconnect: boolean; delay?: number }) => void;
  reconnecting: (info: { attempt: number; delay: number; code: number }) => void;
  error: (error: Error) => void;
  message: (message: UserMessage) => void;
  replay: (end: { ok: boolean; count: number; last: string | null; error?: string }) => void;
  heartbeat: (hb: { interval: number; timeout: number }) => void;
  token: (info: { exp: number; unsubscribed: string[] }) => void;
}

export declare class WsgateError extends Error {
  /** The close or reply code (docs/PROTOCOL.md "Codes"), or a LOCAL code, or null. */
  code: number | null;
  /** The server's reply, when the error is a refused request. */
  reply: unknown;
}

export declare class Wsgate {
  constructor(url: string, options?: Options);
  readonly url: string;
  readonly state: State;
  readonly transport: TransportName | null;
  readonly sid: string | null;
  readonly user: string | null;
  connect(): void;
  close(): void;
  subscribe<T = Json>(channel: string, handlers?: SubscribeHandlers<T>): Subscription;
  unsubscribe(channel: string): void;
  /** `op: msg` to the backend; resolves with the gateway's reply, rejects with a WsgateError when refused. */
  send(data: Json, extra?: { channel?: string; trace?: string }): Promise<unknown>;
  on<E extends keyof Events>(event: E, fn: Events[E]): () => void;
  off<E extends keyof Events>(event: E, fn: Events[E]): void;
}

/** The claims of a JWT, unverified (only to know when to refresh). */
export declare function jwtClaims(token: string): Record<string, unknown> | null;
/** Orders user message ids (`MS-SEQ`) numerically. */
export declare function compareIds(a: string, b: string): number;

export default Wsgate;
