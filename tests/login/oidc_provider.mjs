// A real OpenID Connect provider (the oidc-provider package) on loopback for the login tests.
//
// Usage: node oidc_provider.mjs SETTINGS.json
// SETTINGS: {port, tenant, clients: [{client_id, client_secret, redirect_uris}],
//            accounts_file}. The accounts file ({"<login>": {claims}}) is read at each
// lookup, so a test changes someone's groups by rewriting it. Its endpoints are laid out
// as Azure AD's (/<tenant>/oauth2/v2.0/authorize and /token), so that the Azure AD preset
// and the generic OpenID Connect login can both point at it. People log in on the
// package's own development login page, which accepts any password.
import { readFileSync } from 'node:fs';
import path from 'node:path';

const settings = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const nodeModules = process.env.HUBSTACK_TEST_NODE_MODULES
  || '/opt/hubstack/test-node/node_modules';
const { default: Provider } = await import(
  path.join(nodeModules, 'oidc-provider/lib/index.js')
);

const accounts = () => JSON.parse(readFileSync(settings.accounts_file, 'utf8'));
const issuer = `http://127.0.0.1:${settings.port}`;
const v2 = `/${settings.tenant}/oauth2/v2.0`;

const provider = new Provider(issuer, {
  clients: settings.clients.map((client) => ({
    ...client,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  routes: {
    authorization: `${v2}/authorize`,
    token: `${v2}/token`,
    userinfo: '/oidc/userinfo',
    jwks: `${v2}/keys`,
  },
  claims: {
    openid: ['sub'],
    // Azure AD sends groups with the profile; the test provider does the same.
    profile: ['name', 'preferred_username', 'groups'],
    email: ['email'],
  },
  // Claims in the ID token too, where Azure AD (and so its preset) reads them.
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    const claims = accounts()[id];
    if (!claims) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
  },
  cookies: { keys: ['hubstack-test-provider-cookie-key'] },
});
// Loopback is plain HTTP; the package otherwise insists on secure cookies behind a proxy.
provider.proxy = false;

provider.listen(settings.port, '127.0.0.1', () => {
  process.stdout.write(`listening on ${issuer}\n`);
});
