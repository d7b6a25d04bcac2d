// A real OpenID Connect provider for smartgate's end-to-end tests: panva's oidc-provider,
// issuing SMART on FHIR access tokens. Run with Node 22:
//
//   node idp.mjs CONFIG.json
//
// CONFIG.json (written by tests/e2e/conftest.py):
//   {"host": "127.0.0.1", "resource": "<FHIR base URL>", "redirect_uri": "http://127.0.0.1:1/callback",
//    "users": {"alice": {"patient": "<id>", "fhirUser": "<url>"}, ...},
//    "providers": [{"port": 1234, "introspection_client": {"client_id": "...", "client_secret": "...",
//                   "auth_method": "client_secret_basic"}, "backend_secret": "..."}, ...]}
//
// Each provider (its own issuer, http://host:port) has these clients:
//   smart-rs256, smart-es256  public, authorization code + PKCE (S256); RFC 9068 JWT access tokens
//                             for the resource (the FHIR base) signed RS256 / ES256
//   smart-opaque              the same flow, but opaque access tokens (only these can be introspected)
//   backend                   confidential (client_secret_basic), client_credentials, system/ scopes, JWT
//   <introspection_client>    confidential, for smartgate's RFC 7662 introspection
//   smart-dpop                public, like smart-es256, but its tokens are DPoP-bound (RFC 9449): the token
//                             request carries a DPoP proof, the access token cnf.jkt (its key's thumbprint)
//   smart-mtls                public, like smart-rs256, but its tokens are certificate-bound (RFC 8705): the
//                             token request goes to the provider's HTTPS port with a client certificate, the
//                             access token carries cnf.x5t#S256 (that certificate's thumbprint)
// A provider with "mtls": {"port", "cert", "key", "ca"} (PEM file paths) also serves on that HTTPS port,
// asking for a client certificate issued by "ca"; oidc-provider reads it from the TLS socket.
// The login and consent interaction completes by itself for the user named by login_hint; without
// one, the login prompt is an HTML form (POST login=<user> to the same URL), as a user would see.
// Access tokens carry scope, and patient (with launch/patient) and fhirUser from the user; the token
// response also carries patient (SMART App Launch: the launch context), which SMART clients read.
//
// oidc-provider accepts client_secret_basic and client_secret_post interchangeably for a client
// with a secret; so that the tests can tell which one smartgate used, this wrapper refuses the
// other one (401 invalid_client) for requests to the introspection endpoint, and counts them.
//
// Test controls (loopback only): GET /__e2e/ready; GET /__e2e/stats; POST /__e2e/introspection
// with body "up", "down" (connections to the introspection endpoint are reset) or "error" (500).

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const RESOURCE = config.resource;
const USERS = config.users;

const SMART_SCOPES = [
  'launch', 'launch/patient', 'online_access',
  'patient/*.rs', 'patient/*.cruds', 'patient/*.read', 'patient/*.write', 'patient/*.*',
  'patient/Patient.rs', 'patient/Patient.r', 'patient/Observation.rs', 'patient/Observation.cruds',
  'patient/Observation.read', 'patient/Condition.rs', 'patient/Coverage.rs', 'patient/ExplanationOfBenefit.rs',
  'patient/Encounter.rs', 'patient/Practitioner.rs', 'patient/Organization.rs', 'patient/RelatedPerson.rs',
  'patient/PractitionerRole.rs', 'patient/Device.rs', 'patient/Provenance.rs',
  // CARIN Blue Button consumer apps (SMART v1)
  'patient/ExplanationOfBenefit.read', 'patient/Coverage.read', 'patient/Patient.read', 'patient/Practitioner.read',
  'patient/Organization.read', 'patient/PractitionerRole.read', 'patient/RelatedPerson.read',
  // SMART v2 granular scopes (US Core 6.1 granular scope tests)
  'patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory',
  'patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs',
  'user/*.rs', 'user/*.read', 'user/Observation.rs', 'user/Patient.rs',
  'system/*.rs', 'system/*.read', 'system/Observation.rs', 'system/Patient.rs',
];

function signingKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: 'rs256-1', alg: 'RS256', use: 'sig' },
    { ...ec, kid: 'es256-1', alg: 'ES256', use: 'sig' },
  ];
}

const TOKEN_FORMATS = {
  'smart-rs256': { format: 'jwt', alg: 'RS256' },
  'smart-es256': { format: 'jwt', alg: 'ES256' },
  'smart-opaque': { format: 'opaque' },
  'smart-dpop': { format: 'jwt', alg: 'ES256' },
  'smart-mtls': { format: 'jwt', alg: 'RS256' },
  backend: { format: 'jwt', alg: 'RS256' },
};

function clients(settings) {
  const publicClient = (clientId) => ({
    client_id: clientId,
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    redirect_uris: [config.redirect_uri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  });
  const introspector = settings.introspection_client;
  return [
    publicClient('smart-rs256'),
    publicClient('smart-es256'),
    publicClient('smart-opaque'),
    { ...publicClient('smart-dpop'), dpop_bound_access_tokens: true },
    { ...publicClient('smart-mtls'), tls_client_certificate_bound_access_tokens: true },
    {
      client_id: 'backend',
      client_secret: settings.backend_secret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'system/*.rs system/*.read system/Observation.rs system/Patient.rs',
    },
    {
      client_id: introspector.client_id,
      client_secret: introspector.client_secret,
      token_endpoint_auth_method: introspector.auth_method,
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ];
}

function account(accountId) {
  const user = USERS[accountId];
  if (!user) {
    return undefined;
  }
  return {
    accountId,
    async claims() {
      return { sub: accountId, ...(user.fhirUser ? { fhirUser: user.fhirUser } : {}) };
    },
  };
}

function makeProvider(settings) {
  const issuer = `http://${config.host}:${settings.port}`;
  const provider = new Provider(issuer, {
    clients: clients(settings),
    jwks: { keys: signingKeys() },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    scopes: ['openid', 'offline_access', 'fhirUser', ...SMART_SCOPES],
    claims: { openid: ['sub'], fhirUser: ['fhirUser'] },
    findAccount: async (_ctx, id) => account(id),
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    ttl: {
      AccessToken: 600,
      ClientCredentials: 600,
      AuthorizationCode: 60,
      Interaction: 300,
      Session: 3600,
      Grant: 3600,
      IdToken: 600,
    },
    features: {
      devInteractions: { enabled: false },
      introspection: { enabled: true },
      revocation: { enabled: true },
      clientCredentials: { enabled: true },
      dPoP: { enabled: true },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        // The certificate the HTTPS port verified; none on the plain HTTP port.
        getCertificate: (ctx) => ctx.req.socket.getPeerX509Certificate?.() ?? undefined,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator, client) => {
          if (resourceIndicator !== RESOURCE) {
            throw new errors.InvalidTarget();
          }
          const format = TOKEN_FORMATS[client.clientId] ?? { format: 'opaque' };
          return {
            scope: SMART_SCOPES.join(' '),
            audience: RESOURCE,
            accessTokenTTL: 600,
            accessTokenFormat: format.format,
            ...(format.format === 'jwt' ? { jwt: { sign: { alg: format.alg } } } : {}),
          };
        },
      },
    },
    extraTokenClaims: async (_ctx, token) => {
      const user = token.accountId ? USERS[token.accountId] : undefined;
      if (!user) {
        return undefined;
      }
      const scopes = new Set(String(token.scope ?? '').split(' '));
      const extra = {};
      if (user.fhirUser) {
        extra.fhirUser = user.fhirUser;
      }
      if (user.patient && (scopes.has('launch/patient') || scopes.has('launch'))) {
        extra.patient = user.patient;
      }
      return extra;
    },
  });
  // SMART launch context in the token response (post-middleware on the token endpoint).
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.route !== 'token' || !ctx.body?.access_token) {
      return;
    }
    const accountId = ctx.oidc.entities?.AuthorizationCode?.accountId ?? ctx.oidc.entities?.Grant?.accountId;
    const user = accountId ? USERS[accountId] : undefined;
    const scopes = new Set(String(ctx.body.scope ?? '').split(' '));
    if (user?.patient && (scopes.has('launch/patient') || scopes.has('launch'))) {
      ctx.body.patient = user.patient;
    }
  });
  provider.on('server_error', (_ctx, err) => process.stderr.write(`idp ${settings.port}: ${err.stack}\n`));
  return { issuer, provider };
}

// The interaction: log the user named by login_hint in, then grant what the client asked for.
async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    let accountId = String(params.login_hint ?? '');
    if (!accountId && req.method !== 'POST') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(`<!doctype html><title>Sign in</title><form method="post" action="/interaction/${details.uid}">`
        + '<label>User <input name="login" autofocus></label><button type="submit">Sign in</button></form>');
      return;
    }
    if (!accountId) {
      accountId = new URLSearchParams(await readBody(req)).get('login') ?? '';
    }
    if (!USERS[accountId]) {
      await provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: `no test user ${accountId}`,
      }, { mergeWithLastSubmission: false });
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) {
      grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    }
    if (missing.missingOIDCClaims) {
      grant.addOIDCClaims(missing.missingOIDCClaims);
    }
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  res.writeHead(400, { 'content-type': 'text/plain' });
  res.end(`unexpected prompt ${prompt.name}`);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function authStyle(req) {
  return /^basic /i.test(req.headers.authorization ?? '') ? 'basic' : 'post';
}

const servers = [];
const issuers = [];
for (const settings of config.providers) {
  const { issuer, provider } = makeProvider(settings);
  const callback = provider.callback();
  let introspection = 'up';
  const introspectionAuth = { basic: 0, post: 0, refused: 0 };
  const expectedAuth = settings.introspection_client.auth_method === 'client_secret_post' ? 'post' : 'basic';
  const handler = async (req, res) => {
    try {
      const path = new URL(req.url, issuer).pathname;
      if (path === '/__e2e/ready') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ issuer }));
      } else if (path === '/__e2e/introspection' && req.method === 'POST') {
        const mode = (await readBody(req)).trim();
        if (!['up', 'down', 'error'].includes(mode)) {
          res.writeHead(400);
          res.end();
          return;
        }
        introspection = mode;
        res.writeHead(204);
        res.end();
      } else if (path === '/__e2e/stats') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ introspection_auth: introspectionAuth }));
      } else if (path === '/token/introspection' && introspection === 'down') {
        req.socket.destroy();
      } else if (path === '/token/introspection' && introspection === 'error') {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('introspection is down (test control)');
      } else if (path === '/token/introspection' && authStyle(req) !== expectedAuth) {
        introspectionAuth.refused += 1;
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: 'invalid_client', error_description: `this issuer expects client_secret_${expectedAuth}` }));
      } else if (path.startsWith('/interaction/')) {
        await interaction(provider, req, res);
      } else {
        if (path === '/token/introspection') {
          introspectionAuth[expectedAuth] += 1;
        }
        callback(req, res);
      }
    } catch (err) {
      process.stderr.write(`idp ${settings.port}: ${err.stack ?? err}\n`);
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(err.message ?? err));
      }
    }
  };
  const server = http.createServer(handler);
  server.listen(settings.port, config.host);
  servers.push(server);
  if (settings.mtls) {
    const tls = settings.mtls;
    const secure = https.createServer({
      key: fs.readFileSync(tls.key), cert: fs.readFileSync(tls.cert), ca: fs.readFileSync(tls.ca),
      requestCert: true, rejectUnauthorized: true,
    }, handler);
    secure.listen(tls.port, config.host);
    servers.push(secure);
  }
  issuers.push(issuer);
}
process.stdout.write(`idp issuers: ${issuers.join(' ')}\n`);
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    for (const server of servers) {
      server.closeAllConnections();
      server.close();
    }
    process.exit(0);
  });
}
