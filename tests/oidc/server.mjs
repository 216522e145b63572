// Local OpenID provider (oidc-provider 8.x) for the tokensync end-to-end tests.
//
// It listens on 127.0.0.1 only, keeps all state in memory and prints one JSON
// "ready" line to stdout once it accepts requests. Everything else, including
// oidc-provider's own notices, goes to stderr. See README.md for the settings.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

// oidc-provider 8.x prints some notices with console.info, which writes to
// stdout. Send them to stderr so that stdout carries only the ready line.
console.info = console.error;
console.log = console.error;

const HOST = '127.0.0.1';

const DEFAULT_CLIENTS = [
  { client_id: 'tokensync-e2e', client_secret: 'e2e-secret-0123456789' },
];

const CLIENT_AUTH_METHODS = new Set(['client_secret_basic', 'client_secret_post']);
const CLIENT_KEYS = new Set(['client_id', 'client_secret', 'token_endpoint_auth_method']);

// Resource indicator (RFC 8707) of the one API that this provider issues
// access tokens for. Requests without a `resource` parameter get this one, and
// introspection returns it as `aud`.
const API_RESOURCE = 'urn:tokensync:e2e:api';

// Test-only extension grant that issues an access token and a refresh token to
// an authenticated client, so that a test can get a first refresh token
// without a browser. The tokens belong to the fixed account E2E_ACCOUNT_ID.
const BOOTSTRAP_GRANT_TYPE = 'urn:tokensync:e2e:grant-type:bootstrap';
const E2E_ACCOUNT_ID = 'e2e-user';

// Lifetime of the grant behind bootstrap refresh tokens. Refresh tokens stop
// working once their grant expires, even if they were rotated just before.
const GRANT_TTL_SECONDS = 24 * 60 * 60;

const TOKEN_PATH = '/token';
const INTROSPECTION_PATH = '/token/introspection';

function fail(message) {
  console.error(`oidc test server: ${message}`);
  process.exit(1);
}

function readInteger(name, defaultValue, min, max) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') {
    return defaultValue;
  }

  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    fail(`invalid ${name}=${JSON.stringify(raw)}: expected an integer from ${min} to ${max}`);
  }
  return value;
}

function readScopes() {
  const raw = process.env.OIDC_SCOPES;
  if (raw === undefined || raw === '') {
    return ['api.read', 'api.write'];
  }

  const scopes = [...new Set(raw.split(' ').filter(Boolean))];
  if (scopes.length === 0) {
    fail(`invalid OIDC_SCOPES=${JSON.stringify(raw)}: expected space-separated scope names`);
  }
  return scopes;
}

function validateClient(client, index) {
  const where = `OIDC_CLIENTS[${index}]`;

  if (client === null || typeof client !== 'object' || Array.isArray(client)) {
    fail(`invalid ${where}: expected an object`);
  }

  for (const key of Object.keys(client)) {
    if (!CLIENT_KEYS.has(key)) {
      fail(`invalid ${where}: unknown key ${JSON.stringify(key)}, expected ${[...CLIENT_KEYS].join(', ')}`);
    }
  }

  for (const key of ['client_id', 'client_secret']) {
    if (typeof client[key] !== 'string' || client[key] === '') {
      fail(`invalid ${where}.${key}: expected a non-empty string`);
    }
  }

  const method = client.token_endpoint_auth_method;
  if (method !== undefined && !CLIENT_AUTH_METHODS.has(method)) {
    fail(`invalid ${where}.token_endpoint_auth_method ${JSON.stringify(method)}: expected one of ${[...CLIENT_AUTH_METHODS].join(', ')}`);
  }
}

function readClients() {
  const raw = process.env.OIDC_CLIENTS;
  if (raw === undefined || raw === '') {
    return DEFAULT_CLIENTS;
  }

  let clients;
  try {
    clients = JSON.parse(raw);
  } catch (err) {
    fail(`invalid OIDC_CLIENTS: not valid JSON (${err.message})`);
  }

  if (!Array.isArray(clients) || clients.length === 0) {
    fail('invalid OIDC_CLIENTS: expected a non-empty JSON array of clients');
  }

  clients.forEach(validateClient);

  const ids = new Set();
  for (const { client_id: id } of clients) {
    if (ids.has(id)) {
      fail(`invalid OIDC_CLIENTS: duplicate client_id ${JSON.stringify(id)}`);
    }
    ids.add(id);
  }

  return clients;
}

function readSettings() {
  return {
    port: readInteger('OIDC_PORT', 0, 0, 65535),
    accessTokenTtl: readInteger('OIDC_ACCESS_TOKEN_TTL', 20, 1, 365 * 24 * 60 * 60),
    refreshTokenTtl: readInteger('OIDC_REFRESH_TOKEN_TTL', 3600, 1, 365 * 24 * 60 * 60),
    tokenDelayMs: readInteger('OIDC_TOKEN_DELAY_MS', 0, 0, 60 * 1000),
    scopes: readScopes(),
    clients: readClients(),
  };
}

function toClientMetadata(client) {
  return {
    client_id: client.client_id,
    client_secret: client.client_secret,
    token_endpoint_auth_method: client.token_endpoint_auth_method ?? 'client_secret_basic',
    grant_types: ['client_credentials', 'refresh_token', BOOTSTRAP_GRANT_TYPE],
    response_types: [],
    redirect_uris: [],
  };
}

// Generates a fresh signing key so that oidc-provider does not fall back to its
// built-in development keys. The key is RSA because RS256 is oidc-provider's
// default ID token signing algorithm, although no grant here issues ID tokens.
function generateSigningKeys() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), use: 'sig', kid: 'e2e-rs256' }] };
}

// Describes API_RESOURCE in the form that getResourceServerInfo returns.
function describeApiResource(settings) {
  return {
    scope: settings.scopes.join(' '),
    accessTokenFormat: 'opaque',
    accessTokenTTL: settings.accessTokenTtl,
  };
}

function buildConfiguration(settings, apiResourceInfo) {
  return {
    clients: settings.clients.map(toClientMetadata),
    clientAuthMethods: [...CLIENT_AUTH_METHODS],
    cookies: { keys: [randomBytes(32).toString('hex')] },
    jwks: generateSigningKeys(),
    routes: { token: TOKEN_PATH, introspection: INTROSPECTION_PATH },
    // Keeping offline_access here keeps the refresh_token grant enabled.
    scopes: ['openid', 'offline_access'],
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    rotateRefreshToken: true,
    ttl: {
      AccessToken: settings.accessTokenTtl,
      ClientCredentials: settings.accessTokenTtl,
      RefreshToken: settings.refreshTokenTtl,
      Grant: GRANT_TTL_SECONDS,
    },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      introspection: {
        enabled: true,
        // Every configured client is confidential, so any of them may inspect any token.
        allowedPolicy: async () => true,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => API_RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          if (resourceIndicator !== API_RESOURCE) {
            throw new errors.InvalidTarget(`unknown resource indicator, expected ${API_RESOURCE}`);
          }
          return apiResourceInfo;
        },
      },
    },
  };
}

// Handles BOOTSTRAP_GRANT_TYPE requests. The optional `scope` parameter must be
// a subset of the configured scopes and defaults to all of them.
function createBootstrapGrantHandler(settings, apiResourceInfo) {
  return async function bootstrapGrantHandler(ctx, next) {
    const { client, provider } = ctx.oidc;
    const {
      AccessToken, Grant, RefreshToken, ResourceServer,
    } = provider;

    const requested = ctx.oidc.params.scope
      ? [...new Set(ctx.oidc.params.scope.split(' ').filter(Boolean))]
      : settings.scopes;
    const unknown = requested.filter((scope) => !settings.scopes.includes(scope));
    if (unknown.length > 0) {
      throw new errors.InvalidScope('requested scope is not allowed', unknown.join(' '));
    }
    const scope = requested.join(' ');

    const grant = new Grant({ accountId: E2E_ACCOUNT_ID, clientId: client.clientId });
    grant.addResourceScope(API_RESOURCE, scope);
    ctx.oidc.entity('Grant', grant);
    const grantId = await grant.save();

    const refreshToken = new RefreshToken({
      accountId: E2E_ACCOUNT_ID,
      client,
      grantId,
      gty: BOOTSTRAP_GRANT_TYPE,
      resource: API_RESOURCE,
      rotations: 0,
      scope,
    });
    ctx.oidc.entity('RefreshToken', refreshToken);
    const refreshTokenValue = await refreshToken.save();

    const accessToken = new AccessToken({
      accountId: E2E_ACCOUNT_ID,
      client,
      grantId,
      gty: BOOTSTRAP_GRANT_TYPE,
      scope,
    });
    accessToken.resourceServer = new ResourceServer(API_RESOURCE, apiResourceInfo);
    ctx.oidc.entity('AccessToken', accessToken);
    const accessTokenValue = await accessToken.save();

    ctx.body = {
      access_token: accessTokenValue,
      expires_in: accessToken.expiration,
      refresh_token: refreshTokenValue,
      scope,
      token_type: accessToken.tokenType,
    };

    await next();
  };
}

// Logs every token and introspection request to stderr. It logs the grant
// type, client id, status and error code, but never a token or secret.
function logRequests(provider) {
  provider.use(async (ctx, next) => {
    await next();

    const route = ctx.oidc?.route;
    if (route !== 'token' && route !== 'introspection') {
      return;
    }

    const clientId = ctx.oidc.client?.clientId ?? ctx.oidc.authorization?.clientId ?? '-';
    const fields = [`${route} request:`];
    if (route === 'token') {
      fields.push(`grant_type=${ctx.oidc.params?.grant_type ?? '-'}`);
    }
    fields.push(`client_id=${clientId}`, `status=${ctx.status}`);
    if (ctx.body?.error) {
      fields.push(`error=${ctx.body.error}`);
    }
    if (route === 'introspection' && ctx.status === 200) {
      fields.push(`active=${ctx.body?.active === true}`);
    }
    console.error(fields.join(' '));
  });

  provider.on('server_error', (ctx, err) => {
    console.error(`server error on ${ctx.method} ${ctx.path}:`, err);
  });
}

// Delays each token request by `delayMs` before the provider receives it, so that
// a test can stop a client while its request is in flight. A request whose
// client went away during the delay is dropped unprocessed, as a proxy in
// front of an issuer would drop it.
function delayTokenRequests(handler, delayMs) {
  if (delayMs === 0) {
    return handler;
  }
  return (req, res) => {
    if (req.method !== 'POST' || !req.url.startsWith(TOKEN_PATH) || req.url.startsWith(INTROSPECTION_PATH)) {
      handler(req, res);
      return;
    }
    let clientGone = false;
    req.socket.once('close', () => { clientGone = true; });
    setTimeout(() => {
      if (clientGone || req.socket.destroyed) {
        console.error('token request dropped: the client disconnected during the delay');
        return;
      }
      handler(req, res);
    }, delayMs);
  };
}

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

function stopOnSignals(server) {
  const stop = (signal) => {
    console.error(`received ${signal}, stopping`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

async function main() {
  const settings = readSettings();

  // The issuer contains the port, so the socket is bound before the provider
  // exists. Tests learn the port from the ready line, which is printed only
  // after the request handler is attached.
  const server = http.createServer();
  let port;
  try {
    port = await listen(server, settings.port);
  } catch (err) {
    fail(`failed to listen on ${HOST}:${settings.port}: ${err.message}`);
  }

  const issuer = `http://${HOST}:${port}`;
  const apiResourceInfo = describeApiResource(settings);
  const configuration = buildConfiguration(settings, apiResourceInfo);
  const provider = new Provider(issuer, configuration);
  provider.registerGrantType(
    BOOTSTRAP_GRANT_TYPE,
    createBootstrapGrantHandler(settings, apiResourceInfo),
    ['scope'],
  );

  // oidc-provider validates static clients only on first use, so check them now.
  for (const metadata of configuration.clients) {
    try {
      await provider.Client.validate(metadata);
    } catch (err) {
      fail(`invalid client ${JSON.stringify(metadata.client_id)}: ${err.error_description ?? err.message}`);
    }
  }

  logRequests(provider);
  server.on('request', delayTokenRequests(provider.callback(), settings.tokenDelayMs));
  stopOnSignals(server);

  console.error(`listening on ${issuer} with ${settings.clients.length} client(s), `
    + `access token TTL ${settings.accessTokenTtl} s, refresh token TTL ${settings.refreshTokenTtl} s`);
  process.stdout.write(`${JSON.stringify({
    ready: true,
    issuer,
    token_endpoint: `${issuer}${TOKEN_PATH}`,
    introspection_endpoint: `${issuer}${INTROSPECTION_PATH}`,
  })}\n`);
}

main().catch((err) => {
  console.error('oidc test server: failed to start:', err);
  process.exit(1);
});
