// The interactive reference of the node's OpenAPI document (/docs), drawn by Swagger UI,
// which the page loads first. Nothing leaves the node: no validator badge, no CDN.
window.ui = window.SwaggerUIBundle({
  url: '/api/openapi.json',
  dom_id: '#swagger-ui',
  deepLinking: true,
  validatorUrl: null,
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: 'BaseLayout',
  tryItOutEnabled: false,
});
